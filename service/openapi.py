"""The HTTP API's OpenAPI 3 document, generated from the .proto.

    python -m service.openapi            # rewrite service/openapi.json
    python -m service.openapi --check    # exit 1 when it is stale

The schemas are the proto3 JSON mapping of the .proto's messages (JSON
field names; 64-bit integers as strings; bytes as base64 strings; enums by
name), their descriptions the .proto's comments, read from a descriptor set
that grpcio-tools' protoc makes with source info. The paths are the
endpoints of service/http.py. A test fails when the committed file differs
from what this makes.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTO = "segpress/v1/segpress.proto"
OUT = Path(__file__).parent / "openapi.json"
F = descriptor_pb2.FieldDescriptorProto

_SCALARS = {
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
    F.TYPE_INT64: {"type": "string", "format": "int64"},
    F.TYPE_UINT64: {"type": "string", "format": "uint64"},
    F.TYPE_INT32: {"type": "integer", "format": "int32"},
    F.TYPE_UINT32: {"type": "integer", "format": "uint32"},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "format": "byte"},
}


def descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The .proto as a descriptor with its comments."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
                        "--include_source_info", f"--descriptor_set_out={out}", PROTO], check=True)
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return files.file[0]


def _comment(text: str) -> str:
    """A .proto comment as one paragraph per blank-line-separated block."""
    lines = [line.strip() for line in text.strip().splitlines()]
    return "\n".join(lines).strip()


def build() -> dict:
    fd = descriptor()
    comments = {tuple(loc.path): _comment(loc.leading_comments)
                for loc in fd.source_code_info.location if loc.leading_comments}
    pkg = "." + fd.package + "."
    schemas = {}

    def ref(type_name: str) -> dict:
        return {"$ref": "#/components/schemas/" + type_name.removeprefix(pkg)}

    for i, enum in enumerate(fd.enum_type):
        values = [v.name for v in enum.value]
        lines = [f"- {v.name}: {comments.get((5, i, 2, j), '')}".rstrip(": ")
                 for j, v in enumerate(enum.value)]
        schemas[enum.name] = {"type": "string", "enum": values, "description": "\n".join(
            filter(None, [comments.get((5, i), ""), *lines]))}

    for i, msg in enumerate(fd.message_type):
        props = {}
        for j, f in enumerate(msg.field):
            item = ref(f.type_name) if f.type in (F.TYPE_MESSAGE, F.TYPE_ENUM) else dict(_SCALARS[f.type])
            note = comments.get((4, i, 2, j), "")
            if f.HasField("oneof_index") and not f.proto3_optional:
                note += f"\n(One of `{msg.oneof_decl[f.oneof_index].name}`: set at most one.)"
            if f.label == F.LABEL_REPEATED:
                item = {"type": "array", "items": item}
            if "$ref" in item:  # OpenAPI 3.0 ignores siblings of $ref
                item = {"allOf": [item]}
            props[f.json_name] = {**item, "description": note.strip()}
        schemas[msg.name] = {"type": "object", "description": comments.get((4, i), ""),
                             "properties": props}

    schemas["Error"] = {"type": "object", "description": "Every error's body (Google's JSON error model).",
                        "properties": {"error": {"type": "object", "properties": {
                            "code": {"type": "integer", "description": "The HTTP status."},
                            "status": {"type": "string", "description": "The gRPC status name, "
                                       "such as INVALID_ARGUMENT."},
                            "message": {"type": "string", "description": "What went wrong and "
                                        "what to change (as the gRPC status message)."}}}}}
    schemas["Health"] = {"type": "object", "properties": {"status": {
        "type": "string", "description": "grpc.health.v1 status: SERVING, NOT_SERVING, ..."}}}

    rpcs = {m.name: comments.get((6, 0, 2, k), "") for k, m in enumerate(fd.service[0].method)}
    return {
        "openapi": "3.0.3",
        "info": {"title": "segpress HTTP/JSON API", "version": "v1", "description": (
            "The gRPC service segpress.v1.Segpress over HTTP/JSON (proto3 JSON mapping), served "
            "beside gRPC on --http-port by the same process. Generated from "
            f"proto/{PROTO} by service/openapi.py.")},
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "Needed when the server has auth tokens; the token's namespace is the "
                           "request's."}}},
        "security": [{}, {"bearer": []}],
        "paths": {
            "/v1/compress": {"post": _operation(
                "Compress", rpcs["Compress"], "CompressRequest", "application/json", "CompressResponse")},
            "/v1/compress:stream": {"post": _operation(
                "CompressStream", rpcs["CompressStream"] + "\nOver HTTP: one CompressRequest per "
                "line in (NDJSON), one CompressStreamResponse per line out, in order; an error "
                "that ends the whole stream comes as a last line holding an Error.",
                "CompressRequest", "application/x-ndjson", "CompressStreamResponse")},
            "/v1/info": {"get": _operation("Info", rpcs["Info"], None, "application/json",
                                           "InfoResponse")},
            "/healthz": {"get": _health("Liveness: the gRPC health status of the server "
                                        "(200 while the process answers).")},
            "/readyz": {"get": _health("Readiness: 200 when the Segpress service is SERVING "
                                       "(as gRPC health reports it), else 503.")},
        },
    }


def _operation(name: str, about: str, request: str | None, media: str, response: str) -> dict:
    ok = {"description": "OK", "content": {media: {"schema": {"$ref": f"#/components/schemas/{response}"}}}}
    error = {"description": "The gRPC status mapped to HTTP (Google's API design guide: "
             "400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, "
             "429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, 500 INTERNAL); "
             "413 for a body over max_message_bytes.",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    op = {"operationId": name, "description": about, "parameters": [
        {"name": "timeout", "in": "query", "required": False, "schema": {"type": "number"},
         "description": "Seconds the caller waits (the call's deadline)."},
        {"name": "grpc-timeout", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "The deadline in gRPC's format, such as 500m (milliseconds) or 2S."}],
        "responses": {"200": ok, "default": error}}
    if request:
        op["requestBody"] = {"required": True, "content": {media: {
            "schema": {"$ref": f"#/components/schemas/{request}"}}}}
    return op


def _health(about: str) -> dict:
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}}}
    return {"description": about, "security": [{}],
            "responses": {"200": {"description": "SERVING", **body},
                          "503": {"description": "not SERVING", **body}}}


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when service/openapi.json is stale")
    args = ap.parse_args()
    text = render()
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.name} is stale: run python -m service.openapi", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

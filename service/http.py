"""The HTTP/JSON API beside gRPC (`--http-port`).

A starlette app served by uvicorn on the gRPC server's own event loop. Each
endpoint calls the gRPC servicer's method (service.server.SegpressServicer)
with an `HttpContext` standing in for the gRPC call's context, so auth,
limits, the in-progress limit, metrics, logs and the pipeline are the ones
gRPC calls go through: no second implementation, no proxy hop.

Bodies are the proto3 JSON mapping of the .proto's messages (JSON field
names, enums by name, bytes as base64). Errors: the gRPC status the servicer
gives, mapped to an HTTP status as Google's API design guide maps them
(`HTTP_STATUS`), with the same message in Google's JSON error body
`{"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "..."}}`.
One transport-level case has no gRPC twin: a body (or a stream's line) over
--max-message-bytes is refused with 413 (status RESOURCE_EXHAUSTED) before
it is read in full.

Endpoints: POST /v1/compress, POST /v1/compress:stream (NDJSON: one
CompressRequest per line in, one CompressStreamResponse per line out, in
order), GET /v1/info, GET /healthz (the gRPC health status; 200 while the
process answers), GET /readyz (200 when the Segpress service is SERVING,
else 503), GET /openapi.json, GET / (the page, service/page.html).
Deadlines: `?timeout=SECONDS` or a `grpc-timeout` header (gRPC's format,
such as `500m`); the smaller wins.
"""

import asyncio
import json
import logging
import re
import ssl
from pathlib import Path

import grpc
import uvicorn
from google.protobuf import json_format
from grpc_health.v1 import health_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from segpress.v1 import segpress_pb2 as pb

from .errors import RequestError, Undecodable

log = logging.getLogger("segpress.http")
HERE = Path(__file__).parent
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segpress"].full_name

# gRPC status -> HTTP status, as in Google's API design guide (google.rpc.Code).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class Aborted(grpc.aio.AbortError):
    """What HttpContext.abort raises: the call ends with `code` and `message`."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
        super().__init__(message)
        self.code, self.message = code, message
        self.http_status = http_status or HTTP_STATUS[code]


class BadJson(Undecodable):
    """A body that is not JSON of the message: the servicer answers it
    INVALID_ARGUMENT after auth, as gRPC answers bytes that do not parse."""

    def __init__(self, message_type: str, reason: str):
        super().__init__(message_type)
        self.reason = reason

    def error(self) -> RequestError:
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the body is not a {self.message_type} in proto3 JSON: {self.reason}")


class HttpContext:
    """The part of a grpc.aio ServicerContext the servicers read, for one
    HTTP request: its headers as metadata, its deadline, its peer."""

    def __init__(self, request: Request, timeout_s: float | None):
        self.metadata = tuple((k.decode("latin-1"), v.decode("latin-1"))
                              for k, v in request.scope["headers"])
        loop = asyncio.get_running_loop()
        self.deadline = None if timeout_s is None else loop.time() + timeout_s
        client = request.client
        self._peer = f"ipv4:{client.host}:{client.port}" if client else ""

    def invocation_metadata(self):
        return self.metadata

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - asyncio.get_running_loop().time()

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: grpc.StatusCode, details: str = ""):
        raise Aborted(code, details or code.name)

    async def within(self, awaitable):
        """`awaitable`, or Aborted DEADLINE_EXCEEDED when the deadline passes first."""
        left = self.time_remaining()
        if left is None:
            return await awaitable
        try:
            return await asyncio.wait_for(awaitable, max(left, 0.001))
        except asyncio.TimeoutError:
            raise Aborted(grpc.StatusCode.DEADLINE_EXCEEDED,
                          "the request's deadline passed before the server finished; give it more "
                          "time (timeout=SECONDS or the grpc-timeout header)") from None


def timeout_of(request: Request) -> float | None:
    """Seconds the caller waits: the smaller of ?timeout= and grpc-timeout."""
    found = []
    raw = request.query_params.get("timeout")
    if raw is not None:
        try:
            value = float(raw.removesuffix("s"))
            if not value >= 0 or value == float("inf"):
                raise ValueError
        except ValueError:
            raise Aborted(grpc.StatusCode.INVALID_ARGUMENT,
                          f"timeout={raw!r}: expected seconds, a number >= 0 (such as 2.5)") from None
        found.append(value)
    header = request.headers.get("grpc-timeout")
    if header is not None:
        m = re.fullmatch(r"(\d{1,8})([HMSmun])", header.strip())
        if not m:
            raise Aborted(grpc.StatusCode.INVALID_ARGUMENT,
                          f"grpc-timeout: {header!r}: expected up to 8 digits and a unit H, M, S, "
                          "m, u or n (such as 500m)")
        found.append(int(m.group(1)) * _UNITS[m.group(2)])
    return min(found) if found else None


def error_response(e: Aborted) -> JSONResponse:
    return JSONResponse({"error": error_body(e)}, status_code=e.http_status)


def error_body(e: Aborted) -> dict:
    return {"code": e.http_status, "status": e.code.name, "message": e.message}


def to_json(message) -> bytes:
    return json.dumps(json_format.MessageToDict(message, always_print_fields_with_no_presence=True),
                      ensure_ascii=False, separators=(",", ":")).encode()


def parse(data: bytes, message_class):
    """`data` (proto3 JSON) as a `message_class`, or a BadJson naming the problem."""
    name = message_class.DESCRIPTOR.full_name
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and bad UTF-8 are ValueErrors
        return BadJson(name, f"not JSON: {e}"[:500])
    if not isinstance(value, dict):
        return BadJson(name, f"expected a JSON object, got {type(value).__name__}")
    try:
        return json_format.ParseDict(value, message_class())
    except (json_format.ParseError, RecursionError) as e:
        return BadJson(name, str(e)[:500])


def too_large(what: str, limit: int) -> Aborted:
    return Aborted(grpc.StatusCode.RESOURCE_EXHAUSTED,
                   f"{what} is over the limit of max_message_bytes={limit} bytes; send less per "
                   "request, or more requests", http_status=413)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to be over `limit`."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large("the body", limit)
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large("the body", limit)
        parts.append(chunk)
    return b"".join(parts)


async def request_lines(request: Request, limit: int):
    """The NDJSON body's requests as they arrive (blank lines skipped); a
    line over `limit` ends the stream with RESOURCE_EXHAUSTED."""
    buf = b""
    async for chunk in request.stream():
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if len(line) > limit:
                raise too_large("a line of the stream", limit)
            if line.strip():
                yield parse(line, pb.CompressRequest)
        if len(buf) > limit:
            raise too_large("a line of the stream", limit)
    if buf.strip():
        yield parse(buf, pb.CompressRequest)


class NdjsonResponse(StreamingResponse):
    """A StreamingResponse that leaves the request's body to the app: the
    stream's requests are still being read while its results go out."""

    media_type = "application/x-ndjson"

    async def __call__(self, scope, receive, send) -> None:
        await self.stream_response(send)


def make_app(servicer, health_servicer) -> Starlette:
    """The HTTP API over `servicer` (a SegpressServicer) and the gRPC health servicer."""
    limit = servicer.pipeline.config.max_message_bytes

    def endpoint(fn):
        async def handle(request: Request) -> Response:
            try:
                return await fn(request, HttpContext(request, timeout_of(request)))
            except Aborted as e:
                return error_response(e)
        return handle

    def json_response(message) -> Response:
        return Response(to_json(message), media_type="application/json")

    async def compress(request, ctx):
        body = await read_body(request, limit)
        req = parse(body, pb.CompressRequest)
        return json_response(await ctx.within(servicer.Compress(req, ctx)))

    async def compress_stream(request, ctx):
        results = servicer.CompressStream(request_lines(request, limit), ctx)
        try:  # auth and per-client limits answer with a status before the first line
            first = await ctx.within(results.__anext__())
        except StopAsyncIteration:
            return Response(b"", media_type=NdjsonResponse.media_type)

        async def lines():
            try:
                yield to_json(first) + b"\n"
                while True:
                    try:
                        item = await ctx.within(results.__anext__())
                    except StopAsyncIteration:
                        return
                    yield to_json(item) + b"\n"
            except Aborted as e:  # the stream as a whole ended: its status as the last line
                yield json.dumps({"error": error_body(e)}).encode() + b"\n"
            finally:
                await results.aclose()

        return NdjsonResponse(lines())

    async def info(request, ctx):
        return json_response(await servicer.Info(pb.InfoRequest(), ctx))

    async def health_of(service: str, ctx) -> str:
        resp = await health_servicer.Check(health_pb2.HealthCheckRequest(service=service), ctx)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    async def healthz(request, ctx):
        return JSONResponse({"status": await health_of("", ctx)})

    async def readyz(request, ctx):
        status = await health_of(SERVICE_NAME, ctx)
        return JSONResponse({"status": status}, status_code=200 if status == "SERVING" else 503)

    async def openapi(request, ctx):
        return FileResponse(HERE / "openapi.json", media_type="application/json")

    async def page(request, ctx):
        return FileResponse(HERE / "page.html", media_type="text/html; charset=utf-8")

    async def not_found(request, exc):
        return error_response(Aborted(grpc.StatusCode.NOT_FOUND,
                                      f"no such endpoint: {request.method} {request.url.path}; "
                                      "see /openapi.json"))

    async def not_allowed(request, exc):
        return error_response(Aborted(grpc.StatusCode.UNIMPLEMENTED,
                                      f"{request.method} is not allowed on {request.url.path}; "
                                      "see /openapi.json", http_status=405))

    routes = [
        Route("/v1/compress", endpoint(compress), methods=["POST"]),
        Route("/v1/compress:stream", endpoint(compress_stream), methods=["POST"]),
        Route("/v1/info", endpoint(info), methods=["GET"]),
        Route("/healthz", endpoint(healthz), methods=["GET"]),
        Route("/readyz", endpoint(readyz), methods=["GET"]),
        Route("/openapi.json", endpoint(openapi), methods=["GET"]),
        Route("/", endpoint(page), methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})


class HttpServer:
    """uvicorn serving `app` on the running event loop (no signal handlers
    of its own: the gRPC server's serve() owns SIGTERM)."""

    def __init__(self, app, host: str, port: int, config=None):
        kw = {}
        if config is not None and config.tls_cert:
            kw = {"ssl_certfile": config.tls_cert, "ssl_keyfile": config.tls_key}
            if config.tls_client_ca:
                kw |= {"ssl_ca_certs": config.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        self.config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_config=None,
                                     access_log=False, server_header=False,
                                     timeout_graceful_shutdown=config.grace_s if config else None,
                                     **kw)
        self.server = uvicorn.Server(self.config)
        self.task = None
        self.port = port

    async def start(self) -> int:
        """Listens and serves; returns the bound port."""
        self.config.load()
        self.server.lifespan = self.config.lifespan_class(self.config)
        await self.server.startup()
        if not self.server.started:
            raise SystemExit(f"HTTP: cannot listen on {self.config.host}:{self.config.port}")
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.task = asyncio.ensure_future(self.server.main_loop())
        return self.port

    async def stop(self) -> None:
        """Stops listening, lets open requests finish (up to --grace-s), closes."""
        self.server.should_exit = True
        if self.task is not None:
            await self.task
        await self.server.shutdown()

"""The validate stage: every check a request can fail before any work, each
with a precise status and a message that says what to change."""

import re

import grpc

from compressors.base import Compressor, InvalidParams
from compressors.relevance import Options
from segpress.v1 import segpress_pb2 as pb

from .errors import RequestError, Undecodable

NAMESPACE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # the whole namespace (fullmatch)
CACHE_MODES = {
    pb.CACHE_MODE_UNSPECIFIED: "use",
    pb.CACHE_MODE_USE: "use",
    pb.CACHE_MODE_BYPASS: "bypass",
    pb.CACHE_MODE_REFRESH: "refresh",
}


def validate(req: pb.CompressRequest, config, compressors: dict[str, Compressor], default: str,
             selector) -> tuple[Compressor, object, Options | None]:
    """The compressor, its parameters and the selection options (None:
    no selection), or RequestError. `default`: the compressor a request
    without one gets; `selector`: the sentence embedder (None: selection off)."""
    if isinstance(req, Undecodable):
        raise req.error()
    cfg = config
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    if not req.contexts:
        raise RequestError(invalid, "contexts is empty: send at least one context")
    if len(req.contexts) > cfg.max_contexts:
        raise RequestError(exhausted, f"contexts has {len(req.contexts)} entries; "
                           f"the limit is max_contexts={cfg.max_contexts}")
    for i, c in enumerate(req.contexts):
        if not c.strip():
            raise RequestError(invalid, f"contexts[{i}] is empty or only whitespace")
    query = req.query
    # Characters are at most bytes: a long query is refused without a copy.
    query_bytes = len(query) if len(query) > cfg.max_query_bytes else len(query.encode("utf-8"))
    if query_bytes > cfg.max_query_bytes:
        raise RequestError(exhausted, f"query is more than {cfg.max_query_bytes} bytes; the "
                           f"limit is max_query_bytes={cfg.max_query_bytes}: send a shorter "
                           "question")
    size = sum(len(c.encode("utf-8")) for c in req.contexts) + query_bytes
    which = req.WhichOneof("params")
    if which is not None:  # the compressor's parameters (force_tokens) count too
        size += getattr(req, which).ByteSize()
    if size > cfg.max_request_bytes:
        raise RequestError(exhausted, f"contexts, query and parameters are {size} bytes; "
                           f"the limit is max_request_bytes={cfg.max_request_bytes}")
    name = req.compressor or default
    if name not in compressors:
        raise RequestError(invalid, f"unknown compressor {name!r}; "
                           f"available: {', '.join(sorted(compressors))}")
    if req.cache_mode not in CACHE_MODES:
        raise RequestError(invalid, f"unknown cache_mode {req.cache_mode}; use "
                           "CACHE_MODE_USE (1), CACHE_MODE_BYPASS (2) or CACHE_MODE_REFRESH (3)")
    if req.namespace and not NAMESPACE.fullmatch(req.namespace):
        raise RequestError(invalid, "namespace must be 1-128 characters of letters, "
                           f"digits, '-', '_', '.', ':'; got {req.namespace[:40]!r}")
    if len(req.request_id.encode("utf-8")) > 128:
        raise RequestError(invalid, "request_id is longer than 128 bytes")
    if which is not None and which != name:
        raise RequestError(invalid, f"params for {which!r} were set but compressor "
                           f"is {name!r}; set {name} params or none")
    compressor = compressors[name]
    try:
        params = compressor.Params.from_proto(req)
        params.check()
        compressor.check_params(params)  # checks that need the model
        options = Options.from_proto(req.selection)
    except InvalidParams as e:
        raise RequestError(invalid, str(e)) from None
    return compressor.variant(params), params, _check_query(req, options, selector)

def _check_query(req: pb.CompressRequest, options: Options, selector) -> Options | None:
    """The selection options when selection runs for this request."""
    if not req.HasField("query"):
        return None
    if not req.query.strip():
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "query is set but empty or only whitespace; send a question, "
                           "or leave query unset")
    if req.selection.disabled:
        return None
    if selector is None:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "query-aware selection is off on this server (--selection false); "
                           "leave query unset or set selection.disabled")
    return options

"""The request flow, as named stages:

    validate        precise status for bad input, before any work
    segment         each context into segments          (CPU pool)
    lookup          one key per segment, one batched cache read
    encode misses   one model pass shared by concurrent requests for the
                    same segment (single flight, micro-batched)
    store           the new segments, written back
    select          query-aware selection (a no-op today: every segment is kept)
    render          the request's rate/budget applied to the cached values
    respond         text or tensor, and stats

A compressor plugs into segment, encode and render through the contract in
compressors/base.py; this module never names one. Cache keys depend on the
namespace, compressor, its cache identity and the segment text, never on the
request's rate, query or budget.

Threads: the asyncio event loop only moves data. Tokenizing and rendering run
in a small CPU pool; model forward passes run in one dedicated model thread
(torch itself uses its intra-op threads inside a forward pass), so inference
never blocks the loop and passes never compete with each other for cores.
Missing segments from concurrent requests are gathered into shared model
calls by the compressor's MicroBatcher (service/batcher.py).
"""

import asyncio
import contextlib
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from cache import codec
from cache.keys import segment_key
from compressors.base import Compressor, ContextParts, Encoded, InvalidParams, Rendered, Segment
from compressors.registry import default_of
from segpress.v1 import segpress_pb2 as pb

from . import __version__, metrics
from .auth import check_namespace
from .batcher import MicroBatcher
from .config import Config
from .errors import RequestError, Undecodable

_NAMESPACE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_CACHE_MODES = {
    pb.CACHE_MODE_UNSPECIFIED: "use",
    pb.CACHE_MODE_USE: "use",
    pb.CACHE_MODE_BYPASS: "bypass",
    pb.CACHE_MODE_REFRESH: "refresh",
}


@dataclass
class Flow:
    """One request on its way through the stages; each stage fills its part."""

    req: pb.CompressRequest
    compressor: Compressor
    params: object  # the compressor's Params
    namespace: str
    mode: str  # use, bypass or refresh
    stats: pb.Stats = field(default_factory=pb.Stats)
    segmented: list[list[Segment]] = field(default_factory=list)  # per context
    keys: list[list[str]] = field(default_factory=list)           # per context, per segment
    texts: dict[str, str] = field(default_factory=dict)           # key -> segment text, unique
    found: dict[str, Encoded] = field(default_factory=dict)       # key -> encoded value
    missing: dict[str, str] = field(default_factory=dict)         # key -> text, not in the cache
    owned: list[str] = field(default_factory=list)                # keys this request computed
    parts: list[ContextParts] = field(default_factory=list)       # what render reads
    rendered: list[Rendered] = field(default_factory=list)


class Pipeline:
    def __init__(self, config: Config, compressors: dict[str, Compressor], store=None):
        self.config = config
        self.compressors = compressors
        self.store = store
        self.model_pool = ThreadPoolExecutor(1, thread_name_prefix="segpress-model")
        self.cpu_pool = ThreadPoolExecutor(2, thread_name_prefix="segpress-cpu")
        self._batchers: dict[str, MicroBatcher] = {}

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def default_compressor(self) -> str:
        return default_of(self.compressors)

    async def compress(self, req: pb.CompressRequest, granted_namespace: str | None = None
                       ) -> pb.CompressResponse:
        """Compresses one request. `granted_namespace` is the caller's token's
        namespace when authentication is on (see service.auth)."""
        t0 = time.perf_counter()
        compressor, params = self.validate(req)
        flow = Flow(req, compressor, params, check_namespace(req.namespace, granted_namespace),
                    _CACHE_MODES[req.cache_mode])
        await self.segment(flow)
        await self.lookup(flow)
        await self.encode_misses(flow)
        await self.store_new(flow)
        self.select(flow)
        await self.render(flow)
        return self.respond(flow, t0)

    # -- validate --------------------------------------------------------------

    def validate(self, req: pb.CompressRequest) -> tuple[Compressor, object]:
        """The compressor and its parameters, or RequestError."""
        if isinstance(req, Undecodable):
            raise req.error()
        cfg = self.config
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
        size = sum(len(c.encode("utf-8")) for c in req.contexts) + len(req.query.encode("utf-8"))
        if size > cfg.max_request_bytes:
            raise RequestError(exhausted, f"contexts and query are {size} bytes; "
                               f"the limit is max_request_bytes={cfg.max_request_bytes}")
        name = req.compressor or self.default_compressor
        if name not in self.compressors:
            raise RequestError(invalid, f"unknown compressor {name!r}; "
                               f"available: {', '.join(sorted(self.compressors))}")
        if req.cache_mode not in _CACHE_MODES:
            raise RequestError(invalid, f"unknown cache_mode {req.cache_mode}; use "
                               "CACHE_MODE_USE (1), CACHE_MODE_BYPASS (2) or CACHE_MODE_REFRESH (3)")
        if req.namespace and not _NAMESPACE.match(req.namespace):
            raise RequestError(invalid, "namespace must be 1-128 characters of letters, "
                               f"digits, '-', '_', '.', ':'; got {req.namespace[:40]!r}")
        if len(req.request_id.encode("utf-8")) > 128:
            raise RequestError(invalid, "request_id is longer than 128 bytes")
        which = req.WhichOneof("params")
        if which is not None and which != name:
            raise RequestError(invalid, f"params for {which!r} were set but compressor "
                               f"is {name!r}; set {name} params or none")
        compressor = self.compressors[name]
        try:
            params = compressor.Params.from_proto(req)
            params.check()
            compressor.check_params(params)  # checks that need the model
        except InvalidParams as e:
            raise RequestError(invalid, str(e)) from None
        return compressor, params

    # -- the stages --------------------------------------------------------------

    async def segment(self, flow: Flow) -> None:
        """Segments of every context, and their cache keys."""
        compressor = flow.compressor
        with _timed(flow, "segment_ms"):
            flow.segmented = await asyncio.get_running_loop().run_in_executor(
                self.cpu_pool, lambda: [compressor.segment(c) for c in flow.req.contexts])
        n_tokens = sum(s.n_tokens for segs in flow.segmented for s in segs)
        if n_tokens > self.config.max_request_tokens:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"contexts are {n_tokens} tokens; the limit is "
                               f"max_request_tokens={self.config.max_request_tokens}")
        flow.keys = [[segment_key(flow.namespace, compressor.name, compressor.cache_id, s.text)
                      for s in segs] for segs in flow.segmented]
        flow.texts = {k: s.text for ks, segs in zip(flow.keys, flow.segmented)
                      for k, s in zip(ks, segs)}

    async def lookup(self, flow: Flow) -> None:
        """One batched read of every segment; a corrupt or foreign value is a miss."""
        if flow.mode == "use" and self.store is not None:
            with _timed(flow, "cache_lookup_ms"):
                values, errors = await self.store.get_many(list(flow.texts))
                flow.stats.cache_errors += errors
                for k, v in zip(flow.texts, values):
                    if v is None:
                        continue
                    arrays = codec.decode(flow.compressor.kind, v)
                    if arrays is None:
                        flow.stats.cache_errors += 1
                    else:
                        flow.found[k] = arrays
        flow.missing = {k: txt for k, txt in flow.texts.items() if k not in flow.found}

    async def encode_misses(self, flow: Flow) -> None:
        """The missing segments, encoded together with other requests' (single flight)."""
        with _timed(flow, "encode_ms"):
            if flow.missing:
                computed, flow.owned = await self._batcher(flow.compressor).encode(flow.missing)
                flow.found.update(computed)

    async def store_new(self, flow: Flow) -> None:
        """What this request computed, written back (not with CACHE_MODE_BYPASS)."""
        if flow.owned and flow.mode != "bypass" and self.store is not None:
            kind = flow.compressor.kind
            with _timed(flow, "cache_store_ms"):
                flow.stats.cache_errors += await self.store.put_many(
                    {k: codec.encode(kind, flow.found[k]) for k in flow.owned})

    def select(self, flow: Flow) -> None:
        """Which segments of which contexts go on to render. Today: all of
        them; the query-aware stage goes here."""
        flow.parts = [ContextParts(c, segs, [flow.found[k] for k in ks])
                      for c, segs, ks in zip(flow.req.contexts, flow.segmented, flow.keys)]

    async def render(self, flow: Flow) -> None:
        """The compressor's render, with the request's parameters."""
        query = flow.req.query if flow.req.HasField("query") else None
        with _timed(flow, "render_ms"):
            flow.rendered = await asyncio.get_running_loop().run_in_executor(
                self.cpu_pool, flow.compressor.render, flow.parts, flow.params, query)

    def respond(self, flow: Flow, t0: float) -> pb.CompressResponse:
        """The response: per-context results, text or tensor, stats."""
        compressor, stats = flow.compressor, flow.stats
        resp = pb.CompressResponse(
            request_id=flow.req.request_id,
            compressor=compressor.name,
            model=pb.ModelInfo(id=compressor.model_id, fingerprint=compressor.fingerprint),
        )
        for r, segs in zip(flow.rendered, flow.segmented):
            resp.contexts.add(text=r.text, original_tokens=r.original_tokens,
                              compressed_tokens=r.compressed_tokens, segments=len(segs))
        if compressor.output == "tensor":
            _put_tensors(resp, flow.rendered, compressor, flow.params.output_dtype,
                         self.config.max_message_bytes)
        else:
            resp.text = "\n\n".join(r.text for r in flow.rendered)
        stats.segments = sum(len(s) for s in flow.segmented)
        stats.cache_misses = sum(1 for ks in flow.keys for k in ks if k in flow.missing)
        stats.cache_hits = stats.segments - stats.cache_misses
        stats.original_tokens = sum(r.original_tokens for r in flow.rendered)
        stats.compressed_tokens = sum(r.compressed_tokens for r in flow.rendered)
        if stats.compressed_tokens:
            stats.ratio = stats.original_tokens / stats.compressed_tokens
        if stats.original_tokens:
            stats.rate = stats.compressed_tokens / stats.original_tokens
        stats.timings.total_ms = _ms(t0)
        resp.stats.CopyFrom(stats)
        _record(stats)
        return resp

    def _batcher(self, compressor: Compressor) -> MicroBatcher:
        if compressor.name not in self._batchers:
            self._batchers[compressor.name] = MicroBatcher(
                compressor, self.model_pool, self.config.max_batch_segments)
        return self._batchers[compressor.name]

    # -- info ----------------------------------------------------------------

    def info(self) -> pb.InfoResponse:
        resp = pb.InfoResponse(version=__version__, default_compressor=self.default_compressor)
        for c in self.compressors.values():
            resp.compressors.add(
                name=c.name,
                output=pb.OUTPUT_KIND_TEXT if c.output == "text" else pb.OUTPUT_KIND_SOFT_TOKENS,
                model=pb.ModelInfo(id=c.model_id, fingerprint=c.fingerprint),
                max_segment_tokens=c.max_segment_tokens,
            )
            if c.output == "tensor":
                resp.compressors[-1].decoder.id = c.decoder_id
                resp.compressors[-1].decoder.fingerprint = c.decoder_fingerprint
            for limit, value in c.limits.items():
                setattr(resp.limits, limit, value)
        cfg = self.config
        resp.limits.max_contexts = cfg.max_contexts
        resp.limits.max_request_bytes = cfg.max_request_bytes
        resp.limits.max_message_bytes = cfg.max_message_bytes
        return resp


def _put_tensors(resp: pb.CompressResponse, rendered, compressor, dtype: str, max_bytes: int) -> None:
    """Soft tokens into the response: all contexts' rows concatenated, once,
    in CompressResponse.tensor ([rows, hidden], in `dtype`, with segment row
    offsets and the decoder they are for); each context gets its row and
    segment range in it."""
    import numpy as np
    from segpress.tensors import from_numpy

    row = segment = 0
    for r, ctx in zip(rendered, resp.contexts):
        ctx.row_start, ctx.row_end = row, row + len(r.tensor)
        ctx.segment_start, ctx.segment_end = segment, segment + len(r.segment_rows)
        row, segment = ctx.row_end, ctx.segment_end
    segment_rows = [n for r in rendered for n in r.segment_rows]
    t = from_numpy(np.concatenate([r.tensor for r in rendered]), dtype,
                   np.concatenate([[0], np.cumsum(segment_rows, dtype=np.int64)]))
    t.decoder_id, t.decoder_fingerprint = compressor.decoder_id, compressor.decoder_fingerprint
    resp.tensor.CopyFrom(t)

    # The whole message must fit the server's max_send_message_length; refuse
    # here with a message that says what to change rather than fail the send.
    size = resp.ByteSize() + STATS_HEADROOM
    if size > max_bytes:
        rows, hidden = t.shape
        raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"the response would hold {rows} rows of {hidden} {dtype}, about "
                           f"{size} bytes; the limit is max_message_bytes={max_bytes}: send "
                           "fewer or shorter contexts per request, or ask for "
                           f"{compressor.name}.output_dtype DTYPE_FLOAT16/DTYPE_BFLOAT16")


STATS_HEADROOM = 1024  # bytes for CompressResponse.stats, filled in after the tensor


def _record(stats: pb.Stats) -> None:
    """Adds a finished request's numbers to the Prometheus metrics."""
    tm = stats.timings
    for stage in ("segment", "cache_lookup", "encode", "cache_store", "render"):
        metrics.STAGE.labels(stage).observe(getattr(tm, f"{stage}_ms") / 1000.0)
    metrics.CACHE.labels("hit").inc(stats.cache_hits)
    metrics.CACHE.labels("miss").inc(stats.cache_misses)
    metrics.CACHE_ERRORS.inc(stats.cache_errors)
    metrics.TOKENS.labels("in").inc(stats.original_tokens)
    metrics.TOKENS.labels("out").inc(stats.compressed_tokens)


@contextlib.contextmanager
def _timed(flow: Flow, timing: str):
    """Adds the time the block takes to flow.stats.timings.<timing>."""
    t = time.perf_counter()
    try:
        yield
    finally:
        setattr(flow.stats.timings, timing, _ms(t))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0

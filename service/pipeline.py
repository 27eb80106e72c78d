"""The request flow: validate, segment, look up, encode misses, store, render.

    request(contexts[], query?, compressor, params)
      -> segment each context                  (CPU pool)
      -> one key per segment                    (cache.keys)
      -> one batched cache lookup               (cache.store)
      -> misses: one model pass, shared by concurrent requests for the same
         segment (single flight)                (model thread)
      -> store the new segments
      -> render: apply rate/budget/query to cached per-segment results
      -> response with text or tensor and stats

Threads: the asyncio event loop only moves data. Tokenizing and rendering run
in a small CPU pool; model forward passes run in one dedicated model thread
(torch itself uses its intra-op threads inside a forward pass), so inference
never blocks the loop and passes never compete with each other for cores.
Missing segments from concurrent requests are gathered into shared model
calls by the compressor's MicroBatcher (service/batcher.py).
"""

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from cache import codec
from cache.keys import segment_key
from compressors.base import ContextParts, InvalidParams
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


class Pipeline:
    def __init__(self, config: Config, compressors: dict, store=None):
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

    # -- validation ----------------------------------------------------------

    def validate(self, req: pb.CompressRequest):
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
        params = _params(name, req)
        try:
            params.check()
            compressor.check_params(params)  # checks that need the model (complm.decoder)
        except InvalidParams as e:
            raise RequestError(invalid, str(e)) from None
        return compressor, params

    @property
    def default_compressor(self) -> str:
        return "llmlingua2" if "llmlingua2" in self.compressors else next(iter(self.compressors))

    # -- the flow ------------------------------------------------------------

    async def compress(self, req: pb.CompressRequest, granted_namespace: str | None = None
                       ) -> pb.CompressResponse:
        """Compresses one request. `granted_namespace` is the caller's token's
        namespace when authentication is on (see service.auth)."""
        t0 = time.perf_counter()
        compressor, params = self.validate(req)
        namespace = check_namespace(req.namespace, granted_namespace)
        mode = _CACHE_MODES[req.cache_mode]
        loop = asyncio.get_running_loop()
        stats = pb.Stats()
        tm = stats.timings

        # Segment every context.
        t = time.perf_counter()
        segmented = await loop.run_in_executor(
            self.cpu_pool, lambda: [compressor.segment(c) for c in req.contexts])
        tm.segment_ms = _ms(t)
        n_tokens = sum(s.n_tokens for segs in segmented for s in segs)
        if n_tokens > self.config.max_request_tokens:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"contexts are {n_tokens} tokens; the limit is "
                               f"max_request_tokens={self.config.max_request_tokens}")
        keys = [[segment_key(namespace, compressor.name, compressor.cache_id, s.text)
                 for s in segs] for segs in segmented]
        texts = {k: s.text for ks, segs in zip(keys, segmented) for k, s in zip(ks, segs)}

        # One batched lookup.
        found: dict[str, dict] = {}
        if mode == "use" and self.store is not None:
            t = time.perf_counter()
            values, errors = await self.store.get_many(list(texts))
            stats.cache_errors += errors
            for k, v in zip(texts, values):
                if v is None:
                    continue
                arrays = codec.decode(compressor.kind, v)
                if arrays is None:  # corrupt or foreign value: a miss
                    stats.cache_errors += 1
                else:
                    found[k] = arrays
            tm.cache_lookup_ms = _ms(t)

        # Encode what is missing, sharing work with concurrent requests.
        missing = {k: txt for k, txt in texts.items() if k not in found}
        t = time.perf_counter()
        computed, owned = await self._batcher(compressor).encode(missing) if missing else ({}, [])
        tm.encode_ms = _ms(t)
        found.update(computed)

        if owned and mode != "bypass" and self.store is not None:
            t = time.perf_counter()
            stats.cache_errors += await self.store.put_many(
                {k: codec.encode(compressor.kind, computed[k]) for k in owned})
            tm.cache_store_ms = _ms(t)

        # Render with the request's parameters.
        t = time.perf_counter()
        parts = [ContextParts(c, segs, [found[k] for k in ks])
                 for c, segs, ks in zip(req.contexts, segmented, keys)]
        query = req.query if req.HasField("query") else None
        rendered = await loop.run_in_executor(
            self.cpu_pool, compressor.render, parts, params, query)
        tm.render_ms = _ms(t)

        resp = pb.CompressResponse(
            request_id=req.request_id,
            compressor=compressor.name,
            model=pb.ModelInfo(id=compressor.model_id, fingerprint=compressor.fingerprint),
        )
        for r, segs in zip(rendered, segmented):
            resp.contexts.add(text=r.text, original_tokens=r.original_tokens,
                              compressed_tokens=r.compressed_tokens, segments=len(segs))
        if compressor.output == "tensor":
            _put_tensors(resp, rendered, compressor, params.output_dtype, self.config.max_message_bytes)
        else:
            resp.text = "\n\n".join(r.text for r in rendered)
        n_segments = sum(len(s) for s in segmented)
        stats.segments = n_segments
        stats.cache_misses = sum(1 for ks in keys for k in ks if k in missing)
        stats.cache_hits = n_segments - stats.cache_misses
        stats.original_tokens = sum(r.original_tokens for r in rendered)
        stats.compressed_tokens = sum(r.compressed_tokens for r in rendered)
        if stats.compressed_tokens:
            stats.ratio = stats.original_tokens / stats.compressed_tokens
        if stats.original_tokens:
            stats.rate = stats.compressed_tokens / stats.original_tokens
        tm.total_ms = _ms(t0)
        resp.stats.CopyFrom(stats)
        _record(stats)
        return resp

    def _batcher(self, compressor) -> MicroBatcher:
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
        cfg = self.config
        resp.limits.max_contexts = cfg.max_contexts
        resp.limits.max_request_bytes = cfg.max_request_bytes
        resp.limits.max_message_bytes = cfg.max_message_bytes
        resp.limits.max_force_tokens = _max_force_tokens()
        return resp


def _params(name: str, req: pb.CompressRequest):
    """The compressor's parameter object from the request's proto params."""
    if name == "llmlingua2":
        from compressors.llmlingua2 import Params

        p = req.llmlingua2
        return Params(
            rate=p.rate if p.HasField("rate") else None,
            target_tokens=p.target_tokens if p.HasField("target_tokens") else None,
            force_tokens=list(p.force_tokens),
            force_reserve_digit=p.force_reserve_digit,
            drop_consecutive=p.drop_consecutive,
            granularity={pb.GRANULARITY_UNSPECIFIED: "word", pb.GRANULARITY_WORD: "word",
                         pb.GRANULARITY_SENTENCE: "sentence"}.get(
                             p.granularity, f"Granularity value {p.granularity}"),
        )
    if name == "complm":
        from compressors.complm import Params
        from segpress.tensors import DTYPES

        p = req.complm
        names = {code: name for name, code in DTYPES.items()} | {pb.DTYPE_UNSPECIFIED: "float32"}
        dtype = names.get(p.output_dtype, f"DType value {p.output_dtype}")
        return Params(output_dtype=dtype, decoder=p.decoder)
    raise AssertionError(f"no parameter mapping for compressor {name}")


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
                           "complm.output_dtype DTYPE_FLOAT16/DTYPE_BFLOAT16")


STATS_HEADROOM = 1024  # bytes for CompressResponse.stats, filled in after the tensor


def _max_force_tokens() -> int:
    from compressors.llmlingua2 import MAX_FORCE_TOKENS

    return MAX_FORCE_TOKENS


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


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0

"""The request flow, as named stages:

    validate        precise status for bad input, before any work
    segment         each context into segments          (CPU pool)
    lookup          one key per segment, one batched cache read
    select          with a query: the missing sentence embeddings, then the most
                    relevant sentences of every context, from the embeddings and
                    BM25 (compressors/relevance.py); without one, everything
    check rows      soft compressors: the response's size from the selected
                    segments' tokens, refused before encoding when over the limit
    encode misses   the compressor's missing values of the selected segments, one
                    model pass shared by concurrent requests for the same segment
                    (single flight, micro-batched)
    store           the new values, written back
    render          the request's rate/budget applied to the cached values
    respond         text or tensor, and stats

A compressor plugs into segment, encode and render through the contract in
compressors/base.py; this module never names one. Cache keys depend on the
namespace, compressor, its cache identity and the segment text, never on the
request's rate, query or budget. With a query, each segment's sentence
embeddings are looked up, computed and stored beside the compressor's values,
in the same round trips.

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
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from cache import codec
from cache.keys import segment_key
from cache.local import LocalCache
from compressors.base import (Compressor, ContextParts, Encoded, InvalidParams, Rendered, Segment,
                              overlaps)
from compressors.registry import default_of
from compressors.relevance import Options, SentenceVectors, choose
from segpress.v1 import segpress_pb2 as pb

from . import __version__, metrics
from .auth import check_namespace
from .batcher import MicroBatcher
from .config import Config
from .errors import RequestError, Undecodable

_NAMESPACE = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # the whole namespace (fullmatch)
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
    options: Options | None  # query-aware selection's options; None: no selection
    stats: pb.Stats = field(default_factory=pb.Stats)
    segmented: list[list[Segment]] = field(default_factory=list)  # per context
    keys: list[list[str]] = field(default_factory=list)           # per context, per segment
    # The segments (and their keys above) that go on to the compressor: all
    # of them, or with a soft compressor, those selection kept.
    chosen: list[list[Segment]] = field(default_factory=list)
    vector_keys: list[list[str]] = field(default_factory=list)    # the same, sentence vectors
    texts: dict[str, str] = field(default_factory=dict)           # key -> segment text, unique
    encoders: dict[str, object] = field(default_factory=dict)     # key -> what encodes it
    found: dict[str, Encoded] = field(default_factory=dict)       # key -> encoded value
    missing: dict[str, str] = field(default_factory=dict)         # key -> text, not in the cache
    owned: list[str] = field(default_factory=list)                # keys this request computed
    # Keys another request had just computed when this one's lookup missed
    # them (single flight's finished results): written back like owned ones.
    reused: list[str] = field(default_factory=list)
    parts: list[ContextParts] = field(default_factory=list)       # what render reads
    choices: list = field(default_factory=list)                   # relevance.Choice per context
    rendered: list[Rendered] = field(default_factory=list)


class Pipeline:
    def __init__(self, config: Config, compressors: dict[str, Compressor], store=None,
                 selector: SentenceVectors | None = None):
        self.config = config
        self.compressors = compressors
        self.store = store
        self.selector = selector  # sentence embeddings for query-aware selection
        self.model_pool = ThreadPoolExecutor(1, thread_name_prefix="segpress-model")
        self.cpu_pool = ThreadPoolExecutor(2, thread_name_prefix="segpress-cpu")
        self._batchers: dict[str, MicroBatcher] = {}
        # In-process LRUs: contexts' segmentations (tokenizing is most of a
        # cached request's time) and, when --local-cache-mb is set, decoded
        # values in front of Redis. Both hold only what never changes.
        self.segmentations = LocalCache(config.segment_cache_mb << 20)
        self.hot_values = LocalCache(config.local_cache_mb << 20)

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
        compressor, params, options = self.validate(req)
        flow = Flow(req, compressor, params, check_namespace(req.namespace, granted_namespace),
                    _CACHE_MODES[req.cache_mode], options)
        if options is not None:
            await self.check_query_tokens(req.query)
        try:
            await self.segment(flow)
            await self.lookup(flow)
            await self.select(flow)
            await self.check_rows(flow)
            await self.encode_misses(flow, [k for ks in flow.keys for k in ks])
            await self.store_new(flow)
        finally:
            for key in flow.owned:  # stored (or failed): single flight lets go of them
                self._batcher(flow.encoders[key]).release([key])
        await self.render(flow)
        return self.respond(flow, t0)

    # -- validate --------------------------------------------------------------

    def validate(self, req: pb.CompressRequest) -> tuple[Compressor, object, Options | None]:
        """The compressor, its parameters and the selection options (None:
        no selection), or RequestError."""
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
        name = req.compressor or self.default_compressor
        if name not in self.compressors:
            raise RequestError(invalid, f"unknown compressor {name!r}; "
                               f"available: {', '.join(sorted(self.compressors))}")
        if req.cache_mode not in _CACHE_MODES:
            raise RequestError(invalid, f"unknown cache_mode {req.cache_mode}; use "
                               "CACHE_MODE_USE (1), CACHE_MODE_BYPASS (2) or CACHE_MODE_REFRESH (3)")
        if req.namespace and not _NAMESPACE.fullmatch(req.namespace):
            raise RequestError(invalid, "namespace must be 1-128 characters of letters, "
                               f"digits, '-', '_', '.', ':'; got {req.namespace[:40]!r}")
        if len(req.request_id.encode("utf-8")) > 128:
            raise RequestError(invalid, "request_id is longer than 128 bytes")
        if which is not None and which != name:
            raise RequestError(invalid, f"params for {which!r} were set but compressor "
                               f"is {name!r}; set {name} params or none")
        compressor = self.compressors[name]
        try:
            params = compressor.Params.from_proto(req)
            params.check()
            compressor.check_params(params)  # checks that need the model
            options = Options.from_proto(req.selection)
        except InvalidParams as e:
            raise RequestError(invalid, str(e)) from None
        return compressor, params, self._check_query(req, options)

    def _check_query(self, req: pb.CompressRequest, options: Options) -> Options | None:
        """The selection options when selection runs for this request."""
        if not req.HasField("query"):
            return None
        if not req.query.strip():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "query is set but empty or only whitespace; send a question, "
                               "or leave query unset")
        if req.selection.disabled:
            return None
        if self.selector is None:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "query-aware selection is off on this server (--selection false); "
                               "leave query unset or set selection.disabled")
        return options

    async def check_query_tokens(self, query: str) -> None:
        """The query is at most max_query_tokens tokens, counted in the CPU
        pool (it is at most max_query_bytes, so this is bounded too)."""
        limit = self.selector.max_query_tokens

        def count() -> int:
            n = len(query.split())  # every word is at least one token
            return n if n > limit else self.selector.query_tokens(query)

        if await asyncio.get_running_loop().run_in_executor(self.cpu_pool, count) > limit:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"query is more than {limit} tokens; the limit is "
                               f"max_query_tokens={limit}: send a shorter question")

    # -- the stages --------------------------------------------------------------

    async def segment(self, flow: Flow) -> None:
        """Segments of every context, and their cache keys. A request over
        max_request_tokens is refused before it is segmented: a segment's
        tokens never outnumber its UTF-8 bytes, so a request of at most that
        many bytes is within the limit; a larger one is counted first with
        the compressor's count_tokens (when it has one), which stops at the
        limit, so refusing costs time and memory in proportion to the limit,
        not to the input."""
        compressor = flow.compressor
        limit = self.config.max_request_tokens
        count = getattr(compressor, "count_tokens", None)

        def over_limit() -> bool:
            if count is None or sum(len(c.encode("utf-8")) for c in flow.req.contexts) <= limit:
                return False
            left = limit
            for c in flow.req.contexts:
                left -= count(c, left)
                if left < 0:
                    return True
            return False

        loop = asyncio.get_running_loop()
        with _timed(flow, "segment_ms"):
            if await loop.run_in_executor(self.cpu_pool, over_limit):
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"contexts are more than {limit} tokens; the limit is "
                                   f"max_request_tokens={limit}")
            flow.segmented = await loop.run_in_executor(
                self.cpu_pool, lambda: [self._segment(compressor, c) for c in flow.req.contexts])
        n_tokens = sum(s.n_tokens for segs in flow.segmented for s in segs)
        if n_tokens > self.config.max_request_tokens:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"contexts are {n_tokens} tokens; the limit is "
                               f"max_request_tokens={self.config.max_request_tokens}")
        flow.keys, flow.chosen = self._keys(flow, compressor), flow.segmented
        if flow.options is not None:
            flow.vector_keys = self._keys(flow, self.selector)

    def _segment(self, compressor: Compressor, text: str) -> list[Segment]:
        """compressor.segment(text), from the in-process LRU when it is there."""
        if not self.segmentations:
            return compressor.segment(text)
        key = (compressor.name, compressor.cache_id, text)
        segments = self.segmentations.get(key)
        metrics.LOCAL_CACHE.labels("segments", "miss" if segments is None else "hit").inc()
        if segments is None:
            segments = compressor.segment(text)
            # The context (the key) and the segments' texts, and a little per segment.
            self.segmentations.put(key, segments, 2 * sys.getsizeof(text) + 150 * len(segments))
        return segments

    def _keys(self, flow: Flow, encoder) -> list[list[str]]:
        """Cache keys of every segment's value from `encoder` (the compressor
        or the sentence embedder), registered in flow.texts and flow.encoders."""
        keys = [[segment_key(flow.namespace, encoder.name, encoder.cache_id, s.text)
                 for s in segs] for segs in flow.segmented]
        for ks, segs in zip(keys, flow.segmented):
            for k, s in zip(ks, segs):
                flow.texts[k] = s.text
                flow.encoders[k] = encoder
        return keys

    async def lookup(self, flow: Flow) -> None:
        """One batched read of every segment (of those not in the in-process
        LRU); a corrupt or foreign value is a miss."""
        if flow.mode == "use" and self.hot_values:
            with _timed(flow, "cache_lookup_ms"):
                for k in flow.texts:
                    v = self.hot_values.get(k)
                    metrics.LOCAL_CACHE.labels("values", "miss" if v is None else "hit").inc()
                    if v is not None:
                        flow.found[k] = v
        remote = [k for k in flow.texts if k not in flow.found]
        if flow.mode == "use" and self.store is not None and remote:
            with _timed(flow, "cache_lookup_ms"):
                values, errors = await self.store.get_many(remote)
                flow.stats.cache_errors += errors
                segment_of = {k: s for keys in (flow.keys, flow.vector_keys)
                              for ks, segs in zip(keys, flow.segmented) for k, s in zip(ks, segs)}
                for k, v in zip(remote, values):
                    if v is None:
                        continue
                    arrays = codec.decode(flow.encoders[k].kind, v)
                    # A value that does not fit its segment (a checksum can be
                    # valid over wrong arrays) is a miss, computed again and
                    # overwritten, never an error or wrong text.
                    check = getattr(flow.encoders[k], "check_encoded", None)
                    if arrays is None or check is not None and not check(arrays, segment_of[k]):
                        flow.stats.cache_errors += 1
                    else:
                        flow.found[k] = arrays
                        self._keep_hot(k, arrays)
        flow.missing = {k: txt for k, txt in flow.texts.items() if k not in flow.found}

    async def encode_misses(self, flow: Flow, keys: list[str]) -> None:
        """The values of `keys` that the cache did not have, encoded together
        with other requests' (single flight); the owner of each key (the
        compressor or the sentence embedder) encodes it."""
        work = {k: flow.missing[k] for k in keys if k in flow.missing and k not in flow.found}
        if not work:
            return
        with _timed(flow, "encode_ms"):
            batcher = self._batcher(flow.encoders[next(iter(work))])
            # A finished result waiting here stands in for a cache hit that a
            # lookup sent just before its write missed; with no cache to read
            # (bypass, refresh, no store) every request computes its own.
            reuse = flow.mode == "use" and self.store is not None
            computed, owned, reused = await batcher.encode(work, reuse_finished=reuse)
            flow.found.update(computed)
            flow.owned += owned
            flow.reused += reused

    async def store_new(self, flow: Flow) -> None:
        """What this request computed or reused for a miss, written back (not
        with CACHE_MODE_BYPASS)."""
        new = flow.owned + flow.reused
        if new and flow.mode != "bypass" and self.store is not None:
            with _timed(flow, "cache_store_ms"):
                flow.stats.cache_errors += await self.store.put_many(
                    {k: codec.encode(flow.encoders[k].kind, flow.found[k]) for k in new})
        if flow.mode != "bypass":
            for k in new:
                self._keep_hot(k, flow.found[k])

    def _keep_hot(self, key: str, arrays: Encoded) -> None:
        if self.hot_values:
            self.hot_values.put(key, arrays, sum(a.nbytes for a in arrays.values()) + len(key) + 200)

    async def select(self, flow: Flow) -> None:
        """Which segments go on to the compressor: all of them without a
        query. With one: the sentence embeddings the cache did not have, then
        the query's, then the most relevant sentences and a budget per
        context (compressors/relevance.py). A soft compressor gets only the
        segments that hold a kept sentence (each costs a decoder pass, and
        only those are sent); a text compressor gets every segment, so that
        another question on the same contexts is all cache hits."""
        if flow.options is None:
            return
        await self.encode_misses(flow, [k for ks in flow.vector_keys for k in ks])
        with _timed(flow, "select_ms"):
            loop = asyncio.get_running_loop()
            q = await loop.run_in_executor(self.model_pool, self.selector.query, flow.req.query)
            contexts = [ContextParts(c, segs, []) for c, segs in zip(flow.req.contexts, flow.segmented)]
            vectors = [[flow.found[k] for k in ks] for ks in flow.vector_keys]
            total = sum(s.n_tokens for segs in flow.segmented for s in segs)
            budget = flow.compressor.budget(flow.params, total)
            flow.choices = await loop.run_in_executor(
                self.cpu_pool, choose, contexts, vectors, flow.req.query, q, budget, flow.options)
        if flow.compressor.output == "tensor":
            keep = [[overlaps(seg, choice.allowed) for seg in segs]
                    for segs, choice in zip(flow.segmented, flow.choices)]
            flow.keys = [[k for k, m in zip(ks, ms) if m] for ks, ms in zip(flow.keys, keep)]
            flow.chosen = [[s for s, m in zip(ss, ms) if m] for ss, ms in zip(flow.chosen, keep)]

    async def check_rows(self, flow: Flow) -> None:
        """A soft compressor's response size is known from its segments'
        tokens: a response over max_message_bytes is refused before any
        model time is spent on it, not after. With every segment cached
        there is no model time to save: respond's exact check suffices, and
        a cached request is not tokenized again."""
        comp = flow.compressor
        if comp.output != "tensor" or not any(k in flow.missing for ks in flow.keys for k in ks):
            return

        def count() -> int:
            return sum(sum(comp.rows(s, flow.params) for s in segs) + (comp.end_rows() if segs else 0)
                       for segs in flow.chosen)

        rows = await asyncio.get_running_loop().run_in_executor(self.cpu_pool, count)
        dtype = flow.params.output_dtype
        size = rows * comp.hidden_size * TENSOR_ITEMSIZE[dtype] + STATS_HEADROOM
        if size > self.config.max_message_bytes:
            raise _too_big(comp.name, rows, comp.hidden_size, dtype, size, self.config.max_message_bytes)

    async def render(self, flow: Flow) -> None:
        """The compressor's render, with the request's parameters; with a
        selection, of the selected segments, within its sentences and budgets."""
        flow.parts = [ContextParts(c, segs, [flow.found[k] for k in ks])
                      for c, segs, ks in zip(flow.req.contexts, flow.chosen, flow.keys)]
        for part, choice in zip(flow.parts, flow.choices):
            part.allowed, part.budget = choice.allowed, choice.budget
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
        for i, (r, segs) in enumerate(zip(flow.rendered, flow.segmented)):
            ctx = resp.contexts.add(text=r.text, original_tokens=r.original_tokens,
                                    compressed_tokens=r.compressed_tokens, segments=len(segs),
                                    kept=True)
            if flow.choices:  # what render saw was the selected part; report the whole
                choice = flow.choices[i]
                ctx.relevance, ctx.rank = choice.relevance, choice.rank
                ctx.below_cut = choice.below_cut
                # Kept means something of it is in the output: a context whose
                # budget kept no word is reported as dropped.
                ctx.kept = choice.kept and (bool(r.text) or r.tensor is not None and len(r.tensor) > 0)
                ctx.original_tokens = sum(s.n_tokens for s in segs)
        if compressor.output == "tensor":
            _put_tensors(resp, flow.rendered, compressor, flow.params.output_dtype,
                         self.config.max_message_bytes)
        else:
            order = range(len(flow.rendered))
            if flow.choices and flow.options.order == "relevance":
                order = sorted(order, key=lambda i: flow.choices[i].rank)
            resp.text = "\n\n".join(flow.rendered[i].text for i in order
                                     if not flow.choices or resp.contexts[i].kept)
            # The text is in the message twice (per context and joined): a
            # request within max_request_bytes can still make a response
            # over max_message_bytes. Refuse it here, with a status the log
            # and metrics see, rather than fail the send.
            size = resp.ByteSize() + STATS_HEADROOM
            if size > self.config.max_message_bytes:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"the response would be about {size} bytes (the kept text "
                                   "is sent per context and joined); the limit is "
                                   f"max_message_bytes={self.config.max_message_bytes}: send "
                                   "fewer or shorter contexts per request, or a lower rate")
        stats.segments = sum(len(s) for s in flow.segmented)
        stats.cache_misses = sum(1 for ks in flow.keys for k in ks if k in flow.missing)
        stats.cache_hits = sum(len(ks) for ks in flow.keys) - stats.cache_misses
        if flow.vector_keys:
            stats.sentence_vector_misses = sum(1 for ks in flow.vector_keys for k in ks
                                               if k in flow.missing)
            stats.sentence_vector_hits = stats.segments - stats.sentence_vector_misses
        stats.original_tokens = sum(c.original_tokens for c in resp.contexts)
        stats.compressed_tokens = sum(r.compressed_tokens for r in flow.rendered)
        if stats.compressed_tokens:
            stats.ratio = stats.original_tokens / stats.compressed_tokens
        if stats.original_tokens:
            stats.rate = stats.compressed_tokens / stats.original_tokens
        stats.timings.total_ms = _ms(t0)
        resp.stats.CopyFrom(stats)
        _record(stats)
        return resp

    def _batcher(self, encoder) -> MicroBatcher:
        """The micro-batcher of a compressor or of the sentence embedder."""
        if encoder.name not in self._batchers:
            self._batchers[encoder.name] = MicroBatcher(
                encoder, self.model_pool, self.config.max_batch_segments)
        return self._batchers[encoder.name]

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
                resp.compressors[-1].pooling_factors.extend(c.pooling_factors)
            for limit, value in c.limits.items():
                setattr(resp.limits, limit, value)
        cfg = self.config
        if self.selector is not None:
            resp.limits.max_query_tokens = self.selector.max_query_tokens
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
        raise _too_big(compressor.name, *t.shape, dtype, size, max_bytes)


def _too_big(name: str, rows: int, hidden: int, dtype: str, size: int, max_bytes: int) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the response would hold {rows} rows of {hidden} {dtype}, about "
                        f"{size} bytes; the limit is max_message_bytes={max_bytes}: send "
                        "fewer or shorter contexts per request, or ask for "
                        f"{name}.output_dtype DTYPE_FLOAT16/DTYPE_BFLOAT16")


STATS_HEADROOM = 1024  # bytes for CompressResponse.stats, filled in after the tensor
TENSOR_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}  # bytes per element on the wire


def _record(stats: pb.Stats) -> None:
    """Adds a finished request's numbers to the Prometheus metrics."""
    tm = stats.timings
    for stage in ("segment", "cache_lookup", "select", "encode", "cache_store", "render"):
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
        setattr(flow.stats.timings, timing, getattr(flow.stats.timings, timing) + _ms(t))


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0

"""The request flow, as named stages (each names the module that holds it
when that is not this one):

    validate        precise status for bad input, before any work (validation.py)
    segment         each context into segments          (CPU pool)
    lookup          one key per segment, one batched cache read (values.py)
    select          with a query: the missing sentence embeddings, then the most
                    relevant sentences of every context, from the embeddings and
                    BM25 (compressors/relevance.py); without one, everything
    check rows      soft compressors: the response's size from the selected
                    segments' tokens, refused before encoding when over the limit
    encode misses   the compressor's missing values of the selected segments, one
                    model pass shared by concurrent requests for the same segment
                    (single flight, micro-batched; across replicas that share the
                    Redis, through a short lease per segment: values.py)
    store           the new values, written back as soon as they are computed
    render          the request's rate/budget applied to the cached values
    respond         text or tensor, and stats (responses.py)

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

Fairness: cheap work never queues behind model work. A request whose every
value the cache holds (known after lookup) does its CPU work (the query's
embedding, selection, render) in a light pool of its own, never in the model
thread or behind other requests' tokenizing; so do counting a query's tokens
(bounded by max_query_bytes) and segmenting contexts whose segmentation is in
the in-process LRU. Only requests with misses take one of `max_queue` model
slots, from lookup until their values are stored; over it they are refused
with UNAVAILABLE, and requests with every value cached are still served.
"""

import asyncio
import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc

from cache.local import LocalCache
from compressors.base import Compressor, ContextParts, Segment, overlaps
from compressors.lexicon import SentenceWords
from compressors.registry import default_of
from compressors.relevance import choose
from compressors.sentence_vectors import SentenceVectors
from segpress.v1 import segpress_pb2 as pb

from . import memory, metrics, responses, validation
from .auth import check_namespace
from .flow import Flow, timed
from .values import SegmentValues
from .config import Config
from .errors import RequestError, Undecodable

class Pipeline:
    def __init__(self, config: Config, compressors: dict[str, Compressor], store=None,
                 selector: SentenceVectors | None = None):
        self.config = config
        self.compressors = compressors
        self.store = store
        self.selector = selector  # sentence embeddings for query-aware selection
        self.model_pool = ThreadPoolExecutor(1, thread_name_prefix="segpress-model")
        self.cpu_pool = ThreadPoolExecutor(2, thread_name_prefix="segpress-cpu")
        # Cheap work only (see Fairness above): never waits behind the two above.
        self.light_pool = ThreadPoolExecutor(2, thread_name_prefix="segpress-light")
        self.model_requests = 0  # requests holding a model slot (max_queue)
        self.values = SegmentValues(config, store, self.model_pool)
        # Contexts' segmentations (tokenizing is most of a cached request's
        # time), and segments' sentences' words for selection, in process;
        # they never change.
        self.segmentations = LocalCache(config.segment_cache_mb << 20)

    async def close(self) -> None:
        await self.values.close()
        self.model_pool.shutdown(wait=False, cancel_futures=True)
        self.cpu_pool.shutdown(wait=False, cancel_futures=True)
        self.light_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def default_compressor(self) -> str:
        return default_of(self.compressors)

    async def compress(self, req: pb.CompressRequest, granted_namespace: str | None = None
                       ) -> pb.CompressResponse:
        """Compresses one request. `granted_namespace` is the caller's token's
        namespace when authentication is on (see service.auth). After a large
        one (service/memory.py), freed memory goes back to the OS."""
        try:
            return await self._compress(req, granted_namespace)
        finally:
            if (self.config.malloc_trim and not isinstance(req, Undecodable)
                    and sum(map(len, req.contexts)) >= memory.TRIM_AFTER_CHARS):
                asyncio.get_running_loop().run_in_executor(self.light_pool, memory.trim)

    async def _compress(self, req: pb.CompressRequest, granted_namespace: str | None
                        ) -> pb.CompressResponse:
        t0 = time.perf_counter()
        compressor, params, options = validation.validate(
            req, self.config, self.compressors, self.default_compressor, self.selector)
        flow = Flow(req, compressor, params, check_namespace(req.namespace, granted_namespace),
                    validation.CACHE_MODES[req.cache_mode], options)
        if options is not None:
            await self.check_query_tokens(req.query)
            # The query's embedding needs no cached value: it runs while the
            # contexts are segmented and looked up (select awaits it).
            flow.query_vector = asyncio.get_running_loop().run_in_executor(
                self.light_pool, self.selector.query, req.query)
        try:
            await self.segment(flow)
            await self.values.lookup(flow)
            with self._model_slot(flow):
                await self.select(flow)
                await self.check_rows(flow)
                await self.values.encode_misses(flow, [k for ks in flow.keys for k in ks])
        finally:
            await self.values.let_go(flow)
            if flow.query_vector is not None and not flow.query_vector.done():
                flow.query_vector.cancel()  # the request failed before selection needed it
        await self.render(flow)
        return responses.respond(flow, t0, self.config.max_message_bytes)

    @contextlib.contextmanager
    def _model_slot(self, flow: Flow):
        """One of max_queue model slots while a request with misses waits for
        and uses the model (UNAVAILABLE when none is free); a request with
        every value cached takes none and does its CPU work in the light pool."""
        if not flow.missing:
            flow.pool = self.light_pool
            yield
            return
        flow.pool = self.cpu_pool
        limit = self.config.max_queue
        if self.model_requests >= limit:
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               f"server overloaded: {limit} requests already wait for the "
                               f"model, the limit is max_queue={limit}; retry with backoff "
                               "(requests whose segments are all cached are still served)")
        self.model_requests += 1
        metrics.MODEL_REQUESTS.set(self.model_requests)
        try:
            yield
        finally:
            self.model_requests -= 1
            metrics.MODEL_REQUESTS.set(self.model_requests)

    async def check_query_tokens(self, query: str) -> None:
        """The query is at most max_query_tokens tokens, counted in the light
        pool (it is at most max_query_bytes, so this is bounded and cheap)."""
        limit = self.selector.max_query_tokens

        def count() -> int:
            n = len(query.split())  # every word is at least one token
            return n if n > limit else self.selector.query_tokens(query)

        if await asyncio.get_running_loop().run_in_executor(self.light_pool, count) > limit:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"query is more than {limit} tokens; the limit is "
                               f"max_query_tokens={limit}: send a shorter question")

    # -- the stages --------------------------------------------------------------

    async def segment(self, flow: Flow) -> None:
        """Segments of every context, and their cache keys. A request over
        max_request_tokens is refused before it is segmented: a segment's
        tokens never outnumber its UTF-8 bytes, so a request of at most that
        many bytes is within the limit; a larger one is counted first with
        the compressor's count_tokens, which stops at the
        limit, so refusing costs time and memory in proportion to the limit,
        not to the input."""
        compressor = flow.compressor
        limit = self.config.max_request_tokens
        count = compressor.count_tokens

        def over_limit() -> bool:
            if sum(len(c.encode("utf-8")) for c in flow.req.contexts) <= limit:
                return False
            left = limit
            for c in flow.req.contexts:
                left -= count(c, left)
                if left < 0:
                    return True
            return False

        loop = asyncio.get_running_loop()
        with timed(flow, "segment_ms"):
            # Contexts seen before: their segmentations, no tokenizing (light pool).
            flow.segmented = await loop.run_in_executor(
                self.light_pool, self._known_segmentations, compressor, flow.req.contexts)
            if flow.segmented is None:
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
        flow.keys, flow.chosen = self.values.keys(flow, compressor), flow.segmented
        if flow.options is not None:
            flow.vector_keys = self.values.keys(flow, self.selector)

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

    def _known_segmentations(self, compressor: Compressor, contexts) -> list[list[Segment]] | None:
        """Every context's segmentation from the in-process LRU, or None when
        one of them is not there."""
        if not self.segmentations:
            return None
        out = []
        for text in contexts:
            segments = self.segmentations.get((compressor.name, compressor.cache_id, text))
            if segments is None:
                return None
            out.append(segments)
        metrics.LOCAL_CACHE.labels("segments", "hit").inc(len(out))
        return out

    async def select(self, flow: Flow) -> None:
        """Which segments go on to the compressor: all of them without a
        query. With one: the sentence embeddings the cache did not have, the
        query's (started with the request), then the most relevant sentences
        and a budget per context (compressors/relevance.py); the compressor
        gets only the segments that hold a kept sentence. So a question costs
        the sentence embeddings and the compressor's passes over what it keeps,
        not over every segment; a later question on the same contexts computes
        the segments it keeps that no earlier one did (never one twice)."""
        if flow.options is None:
            return
        await self.values.encode_misses(flow, [k for ks in flow.vector_keys for k in ks])
        with timed(flow, "select_ms"):
            loop = asyncio.get_running_loop()
            q = await flow.query_vector  # started with the request (_compress)
            contexts = [ContextParts(c, segs, []) for c, segs in zip(flow.req.contexts, flow.segmented)]
            vectors = [[flow.found[k] for k in ks] for ks in flow.vector_keys]
            total = sum(s.n_tokens for segs in flow.segmented for s in segs)
            budget = flow.compressor.budget(flow.params, total)

            def pick():
                words = [[self._sentence_words(k, seg, flow.found[k]) for seg, k in zip(segs, ks)]
                         for segs, ks in zip(flow.segmented, flow.vector_keys)]
                return choose(contexts, vectors, flow.req.query, q, budget, flow.options, words)

            flow.choices = await loop.run_in_executor(flow.pool, pick)
        keep = [[overlaps(seg, choice.allowed) for seg in segs]
                for segs, choice in zip(flow.segmented, flow.choices)]
        flow.keys = [[k for k, m in zip(ks, ms) if m] for ks, ms in zip(flow.keys, keep)]
        flow.chosen = [[s for s, m in zip(ss, ms) if m] for ss, ms in zip(flow.chosen, keep)]

    def _sentence_words(self, key: str, segment: Segment, value) -> SentenceWords:
        """The words of a segment's sentences (compressors/lexicon.py), from
        the in-process LRU when they are there (`key`: its sentence vectors')."""
        if not self.segmentations:
            return SentenceWords.of([segment.text[s:e] for s, e in value["spans"].tolist()])
        words = self.segmentations.get(("words", key))
        metrics.LOCAL_CACHE.labels("words", "miss" if words is None else "hit").inc()
        if words is None:
            words = SentenceWords.of([segment.text[s:e] for s, e in value["spans"].tolist()])
            self.segmentations.put(("words", key), words, words.approx_bytes())
        return words

    async def check_rows(self, flow: Flow) -> None:
        """A soft compressor's response size is known from its segments'
        tokens: a response over max_message_bytes (or refinement over
        max_refine_segment_steps) is refused before any model time is spent
        on it, not after. With every segment cached
        there is no model time to save: respond's exact check suffices, and
        a cached request is not tokenized again."""
        comp = flow.compressor
        if comp.output != "tensor" or not any(k in flow.missing for ks in flow.keys for k in ks):
            return

        def count() -> int:
            return sum(sum(comp.rows(s, flow.params) for s in segs) + (comp.end_rows() if segs else 0)
                       for segs in flow.chosen)

        if comp.refine_steps:  # refinement's work is bounded before it starts, as the size is
            todo = sum(k in flow.missing for ks in flow.keys for k in ks)
            most = self.config.max_refine_segment_steps
            if todo * comp.refine_steps > most:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"refining {todo} uncached segments {comp.refine_steps} steps each is "
                                   f"{todo * comp.refine_steps} segment-steps; the limit is "
                                   f"max_refine_segment_steps={most}: send fewer or shorter contexts "
                                   f"per request, or ask for fewer {comp.name}.refine_steps")
        rows = await asyncio.get_running_loop().run_in_executor(self.cpu_pool, count)
        dtype = flow.params.output_dtype
        size = rows * comp.hidden_size * responses.TENSOR_ITEMSIZE[dtype] + responses.STATS_HEADROOM
        if size > self.config.max_message_bytes:
            raise responses.too_big(comp.name, rows, comp.hidden_size, dtype, size, self.config.max_message_bytes)

    async def render(self, flow: Flow) -> None:
        """The compressor's render, with the request's parameters; with a
        selection, of the selected segments, within its sentences and budgets."""
        flow.parts = [ContextParts(c, segs, [flow.found[k] for k in ks])
                      for c, segs, ks in zip(flow.req.contexts, flow.chosen, flow.keys)]
        for part, choice in zip(flow.parts, flow.choices):
            part.allowed, part.budget = choice.allowed, choice.budget
        query = flow.req.query if flow.req.HasField("query") else None
        with timed(flow, "render_ms"):
            flow.rendered = await asyncio.get_running_loop().run_in_executor(
                flow.pool, flow.compressor.render, flow.parts, flow.params, query)

    def info(self) -> pb.InfoResponse:
        return responses.info(self)


"""Each segment's value: the in-process LRU and Redis first, then the model
for what they miss, written back as soon as it is computed.

Concurrent requests of this process share one model pass per segment
(single flight, micro-batched by service/batcher.py). Replicas that share
the Redis share it too, through a short lease per segment (--cache-lease-s):
one replica computes, the others wait for its value, and compute it
themselves only if the lease ends without one.
"""

import asyncio
from concurrent.futures import Executor

from cache import codec
from cache.keys import segment_key
from cache.local import LocalCache
from compressors.base import Encoded
from compressors.sentence_vectors import COMPANION

from . import metrics
from .batcher import MicroBatcher
from .flow import Flow, timed


class SegmentValues:
    def __init__(self, config, store, model_pool: Executor):
        self.store = store
        # With --cache-secret, keys are derived with the deployment's key.
        self.signer = getattr(store, "signer", None)
        self.model_pool = model_pool
        self.max_batch_segments = config.max_batch_segments
        self._batchers: dict[tuple[str, str], MicroBatcher] = {}
        # When --local-cache-mb is set, decoded values in front of Redis.
        self.hot_values = LocalCache(config.local_cache_mb << 20)

    async def close(self) -> None:
        for b in self._batchers.values():
            await b.close()

    def batcher(self, encoder) -> MicroBatcher:
        """The micro-batcher of a compressor or of the sentence embedder, one
        per cache identity (a soft compressor's refined rows have their own)."""
        key = (encoder.name, encoder.cache_id)
        if key not in self._batchers:
            self._batchers[key] = MicroBatcher(encoder, self.model_pool, self.max_batch_segments)
        return self._batchers[key]

    async def let_go(self, flow: Flow) -> None:
        """After a request's values are stored (or it failed): single flight
        lets go of what it computed, and leases still held are released."""
        for key in flow.owned:
            self.batcher(flow.encoders[key]).release([key])
        for token in set(flow.leases.values()):  # only left on a failure
            await self.store.release_leases([k for k, t in flow.leases.items() if t == token], token)

    def keys(self, flow: Flow, encoder) -> list[list[str]]:
        """Cache keys of every segment's value from `encoder` (the compressor
        or the sentence embedder), registered in flow.texts and flow.encoders."""
        keys = [[segment_key(flow.namespace, encoder.name, encoder.cache_id, s.text, self.signer)
                 for s in segs] for segs in flow.segmented]
        for ks, segs in zip(keys, flow.segmented):
            for k, s in zip(ks, segs):
                flow.texts[k] = s.text
                flow.encoders[k] = encoder
        return keys

    async def lookup(self, flow: Flow) -> None:
        """One batched read of every segment (of those not in the in-process
        LRU); a corrupt or foreign value, or one whose tag fails, is a miss."""
        if flow.mode == "use" and self.hot_values:
            with timed(flow, "cache_lookup_ms"):
                for k in flow.texts:
                    v = self.hot_values.get(k)
                    metrics.LOCAL_CACHE.labels("values", "miss" if v is None else "hit").inc()
                    if v is not None:
                        flow.found[k] = v
        remote = [k for k in flow.texts if k not in flow.found]
        if flow.mode == "use" and self.store is not None and remote:
            with timed(flow, "cache_lookup_ms"):
                values, errors, rejected = await self.store.get_many(remote)
                flow.stats.cache_errors += errors + rejected
                metrics.CACHE_REJECTED.inc(rejected)
                for k, v in zip(remote, values):
                    if v is not None:
                        self.accept(flow, k, v)
        flow.missing = {k: txt for k, txt in flow.texts.items() if k not in flow.found}

    def accept(self, flow: Flow, key: str, value: bytes) -> bool:
        """Decodes a value read from Redis into flow.found. A value that does
        not fit its segment (a checksum can be valid over wrong arrays) is a
        miss, counted in cache_errors, computed again and overwritten, never
        an error or wrong text."""
        arrays = codec.decode(flow.encoders[key].kind, value)
        if not flow.segment_of:
            flow.segment_of = {k: s for keys in (flow.keys, flow.vector_keys)
                               for ks, segs in zip(keys, flow.segmented) for k, s in zip(ks, segs)}
        if arrays is None or not flow.encoders[key].check_encoded(arrays, flow.segment_of[key]):
            flow.stats.cache_errors += 1
            return False
        flow.found[key] = arrays
        self.keep_hot(key, arrays)
        return True

    async def encode_misses(self, flow: Flow, keys: list[str]) -> None:
        """The values of `keys` that the cache did not have, encoded together
        with other requests' (single flight) and written back; the owner of
        each key (the compressor or the sentence embedder) encodes it. With
        leases on, a key no request of this process is computing is leased
        first: another replica's lease means waiting for its value (while
        this request computes the keys it won), and computing it here only
        if that lease ends with no value."""
        work = {k: flow.missing[k] for k in keys if k in flow.missing and k not in flow.found}
        if not work:
            return
        batcher = self.batcher(flow.encoders[next(iter(work))])
        if flow.mode != "use" or self.store is None or self.store.lease_s <= 0:
            await self._compute(flow, batcher, work)
            return
        local = [k for k in work if batcher.has(k)]
        metrics.LEASES.labels("local").inc(len(local))
        with timed(flow, "cache_lookup_ms"):
            leases = await self.store.take_leases([k for k in work if k not in local])
        metrics.LEASES.labels("won").inc(len(leases.won))
        metrics.LEASES.labels("found").inc(len(leases.found))
        metrics.LEASES.labels("error").inc(len(leases.failed))
        if leases.failed:  # Redis failed: computed here, as without leases
            flow.stats.cache_errors += 1
        flow.leases.update(dict.fromkeys(leases.won, leases.token))
        late = [k for k, v in leases.found.items() if not self.accept(flow, k, v)]
        mine = {k: work[k] for k in local + leases.won + leases.failed + late}
        computing = asyncio.ensure_future(self._compute(flow, batcher, mine))
        waiting = asyncio.ensure_future(self._wait(flow, leases.lost))
        try:
            # The first failure (or this request's cancellation) ends both.
            await asyncio.wait((computing, waiting), return_when=asyncio.FIRST_EXCEPTION)
            await computing
            rest = await waiting
        finally:
            for task in (computing, waiting):
                task.cancel()
            await asyncio.gather(computing, waiting, return_exceptions=True)
        await self._compute(flow, batcher, {k: work[k] for k in rest})

    async def _wait(self, flow: Flow, keys: list[str]) -> list[str]:
        """Waits for other replicas' values of `keys`; returns those this
        request must compute itself."""
        if not keys:
            return []
        with timed(flow, "encode_ms"):
            waited = await self.store.wait_for(keys)
        metrics.LEASES.labels("expired").inc(len(waited.expired))
        metrics.LEASES.labels("error").inc(len(waited.failed))
        if waited.failed:
            flow.stats.cache_errors += 1
        bad = [k for k, v in waited.values.items() if not self.accept(flow, k, v)]
        metrics.LEASES.labels("waited").inc(len(waited.values) - len(bad))
        return waited.expired + waited.failed + bad

    async def _compute(self, flow: Flow, batcher: MicroBatcher, work: dict[str, str]) -> None:
        """Encodes `work` (shared with concurrent requests of this process),
        writes the new values and lets go of their leases."""
        if not work:
            return
        try:
            with timed(flow, "encode_ms"):
                # A finished result waiting here stands in for a cache hit that a
                # lookup sent just before its write missed; with no cache to read
                # (bypass, refresh, no store) every request computes its own.
                reuse = flow.mode == "use" and self.store is not None
                computed, owned, reused = await batcher.encode(work, reuse_finished=reuse)
            computed, companions = self.split_companions(flow, computed)
            flow.found.update(computed)
            flow.owned += owned
            flow.reused += reused
            await self.store_new(flow, owned + reused + companions)
        finally:
            held = [k for k in work if k in flow.leases]
            if held:
                token = flow.leases[held[0]]
                for k in held:
                    del flow.leases[k]
                await self.store.release_leases(held, token)

    def split_companions(self, flow: Flow, computed: dict[str, Encoded]
                         ) -> tuple[dict[str, Encoded], list[str]]:
        """A value that carries its segment's compressor value beside it
        (COMPANION: sentence vectors pooled from the classifier's pass) gives
        that segment's compressor value too, when the request's compressor is
        that classifier (the same name and cache_id): it goes into flow.found
        (and the cache) as if the compressor had computed it (it did, in the
        same pass). Returns the values without it, and the compressor keys
        so filled."""
        out, filled = {}, []
        mine = (flow.compressor.name, flow.compressor.cache_id)
        for key, value in computed.items():
            if COMPANION not in value:
                out[key] = value
                continue
            out[key] = {name: array for name, array in value.items() if name != COMPANION}
            *whose, companion = value[COMPANION]
            if tuple(whose) != mine:
                continue
            ck = segment_key(flow.namespace, *mine, flow.texts[key], self.signer)
            if ck in flow.texts and ck not in flow.found:
                flow.found[ck] = companion
                filled.append(ck)
        return out, filled

    async def store_new(self, flow: Flow, new: list[str]) -> None:
        """Values this request computed or reused for a miss, written back
        (not with CACHE_MODE_BYPASS)."""
        if new and flow.mode != "bypass" and self.store is not None:
            with timed(flow, "cache_store_ms"):
                flow.stats.cache_errors += await self.store.put_many(
                    {k: codec.encode(flow.encoders[k].kind, flow.found[k]) for k in new})
        if flow.mode != "bypass":
            for k in new:
                self.keep_hot(k, flow.found[k])

    def keep_hot(self, key: str, arrays: Encoded) -> None:
        if self.hot_values:
            self.hot_values.put(key, arrays, sum(a.nbytes for a in arrays.values()) + len(key) + 200)

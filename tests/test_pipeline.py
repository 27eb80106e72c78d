"""The request flow in process: single flight and cache-key behaviour."""

import asyncio
import threading

import pytest

from cache.store import SegmentStore, connect
from segpress import SegpressClient
from service.config import Config
from service.pipeline import Pipeline


class CountingCompressor:
    """The real compressor, with a record of what reached the model."""

    def __init__(self, inner):
        self._inner = inner
        self.encoded: list[str] = []
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, texts):
        with self._lock:
            self.encoded.extend(texts)
        return self._inner.encode(texts)


@pytest.fixture()
def pipeline_parts(llmlingua2, redis_proc):
    counting = CountingCompressor(llmlingua2)
    config = Config(redis_url=redis_proc.url)
    return config, counting


def test_concurrent_requests_for_a_missing_segment_compute_it_once(pipeline_parts, sample_text):
    config, counting = pipeline_parts
    text = "Single flight check. " + sample_text

    async def run():
        store = SegmentStore(connect(config.redis_url, 1.0), ttl_s=60, timeout_s=1.0)
        pipeline = Pipeline(config, {"llmlingua2": counting}, store)
        try:
            req = SegpressClient.request([text], rate=0.5, namespace="single-flight")
            return await asyncio.gather(*[pipeline.compress(req) for _ in range(6)])
        finally:
            await pipeline.close()
            await store.close()

    outs = asyncio.run(run())
    segments = outs[0].stats.segments
    assert segments >= 2
    assert len(counting.encoded) == segments == len(set(counting.encoded))
    assert len({o.text for o in outs}) == 1


def test_without_a_store_every_request_computes(pipeline_parts):
    config, counting = pipeline_parts

    async def run():
        pipeline = Pipeline(config, {"llmlingua2": counting}, store=None)
        try:
            req = SegpressClient.request(["No cache configured here."])
            a = await pipeline.compress(req)
            b = await pipeline.compress(req)
            return a, b
        finally:
            await pipeline.close()

    a, b = asyncio.run(run())
    assert a.stats.cache_misses == b.stats.cache_misses == 1
    assert a.text == b.text and len(counting.encoded) == 2

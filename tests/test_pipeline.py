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

    def variant(self, params):
        return self  # what serves a request is this wrapper, not the inner compressor

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


@pytest.mark.parametrize("dtype,itemsize", [("float32", 4), ("bfloat16", 2)])
def test_soft_token_response_is_held_to_the_message_limit(dtype, itemsize):
    """The whole response (rows sent once, plus room for the stats) must fit
    max_message_bytes: at the limit it passes, a byte under it is refused
    with a message naming the limit."""
    import types

    import grpc
    import numpy as np

    from compressors.base import Rendered
    from segpress import pb
    from service.errors import RequestError
    from service.responses import STATS_HEADROOM, put_tensors

    hidden = 8
    rendered = [Rendered(3, 3, tensor=np.ones((3, hidden), np.float32), segment_rows=[2, 1]),
                Rendered(2, 2, tensor=np.ones((2, hidden), np.float32), segment_rows=[2])]
    decoder = types.SimpleNamespace(name="complm", decoder_id="dec", decoder_fingerprint="f" * 64)

    def response(limit):
        resp = pb.CompressResponse(contexts=[pb.CompressedContext(), pb.CompressedContext()])
        put_tensors(resp, rendered, decoder, dtype, limit)
        return resp

    resp = response(1 << 20)
    assert list(resp.tensor.shape) == [5, hidden] and len(resp.tensor.data) == 5 * hidden * itemsize
    assert [(c.row_start, c.row_end) for c in resp.contexts] == [(0, 3), (3, 5)]
    assert list(resp.tensor.segment_offsets) == [0, 2, 3, 5]
    limit = resp.ByteSize() + STATS_HEADROOM
    assert response(limit).tensor.data == resp.tensor.data
    with pytest.raises(RequestError) as e:
        response(limit - 1)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"max_message_bytes={limit - 1}" in str(e.value)

"""The request flow, the cache and the API without model weights (the fast
tier): a real Redis, a real gRPC server on loopback, and the tiny
deterministic compressor of tests/tiny.py in place of a model.

    pytest -m "not slow"     # this module and the other tests that need no weights
"""

import asyncio
import uuid

import grpc
import pytest

from compressors.base import Compressor
from segpress import SegpressClient, SegpressError
from segpress.v1 import segpress_pb2 as pb
from service.config import Config

from helpers import InProcessServer
from tiny import Tiny

TEXT = ("The harbour froze in the winter of 1902. Ships waited outside for eleven days, "
        "and the town ran short of coal. A rescue party crossed the ice on foot.")
OTHER = "Bread needs flour, water, salt and time; the rest is patience and a hot oven."


@pytest.fixture(scope="module")
def tiny():
    return Tiny()


@pytest.fixture(scope="module")
def srv(redis_proc, tiny):
    config = Config(port=0, redis_url=redis_proc.url, max_contexts=4, metrics_port=0)
    s = InProcessServer(config, {"tiny": tiny})
    yield s
    s.stop()


@pytest.fixture()
def client(srv):
    with SegpressClient(srv.target, timeout_s=30) as c:
        yield c


@pytest.fixture()
def ns():
    """A namespace of this test's own, so tests never see each other's entries."""
    return "t-" + uuid.uuid4().hex[:12]


def test_tiny_keeps_the_contract(tiny):
    assert isinstance(tiny, Compressor)
    for seg in tiny.segment(TEXT):
        assert TEXT[seg.start : seg.end] == seg.text and seg.text == seg.text.strip()


def test_info_lists_the_compressor_and_limits(client):
    info = client.info()
    assert info.default_compressor == "tiny"
    assert [c.name for c in info.compressors] == ["tiny"]
    assert info.compressors[0].output == pb.OUTPUT_KIND_TEXT
    assert info.limits.max_contexts == 4
    assert info.limits.max_query_bytes == 16 << 10  # the default max_query_bytes


def test_repeat_is_all_hits_and_identical(client, tiny, ns):
    first = client.compress([TEXT, OTHER], namespace=ns)
    n = first.stats.segments
    assert n >= 4 and first.stats.cache_misses == n and first.stats.cache_hits == 0
    seen = len(tiny.encoded)
    second = client.compress([TEXT, OTHER], namespace=ns)
    assert second.stats.cache_hits == n and second.stats.cache_misses == 0
    assert len(tiny.encoded) == seen  # nothing encoded again
    assert second.text == first.text and [c.text for c in second.contexts] == \
        [c.text for c in first.contexts]
    for original, ctx in zip([TEXT, OTHER], second.contexts):
        assert all(word in original.split() for word in ctx.text.split())


def test_shared_context_and_another_query_are_hits(client, ns):
    client.compress([TEXT], namespace=ns)
    resp = client.compress([OTHER, TEXT], namespace=ns, query="when did the harbour freeze?",
                           selection=False)
    assert resp.stats.cache_hits == len(Tiny().segment(TEXT))  # cache keys ignore the query
    assert resp.stats.cache_misses == len(Tiny().segment(OTHER))


def test_namespaces_do_not_share_entries(client, ns):
    client.compress([TEXT], namespace=ns)
    assert client.compress([TEXT], namespace=ns + "-b").stats.cache_hits == 0


def test_bypass_skips_the_cache_and_refresh_recomputes(client, tiny, ns):
    n = len(tiny.segment(TEXT))
    assert client.compress([TEXT], namespace=ns, cache="bypass").stats.cache_misses == n
    assert client.compress([TEXT], namespace=ns).stats.cache_misses == n  # bypass stored nothing
    before = len(tiny.encoded)
    assert client.compress([TEXT], namespace=ns, cache="refresh").stats.cache_misses == n
    assert len(tiny.encoded) == before + n
    assert client.compress([TEXT], namespace=ns).stats.cache_hits == n


def test_a_corrupt_value_is_a_miss_with_the_same_output(client, redis_proc, ns):
    first = client.compress([TEXT], namespace=ns)
    r = redis_proc.client()
    keys = r.keys(f"segpress:v1:{ns}:tiny:*")
    assert len(keys) == first.stats.segments
    r.set(keys[0], b"SGP1 not a value")
    again = client.compress([TEXT], namespace=ns)
    assert again.stats.cache_errors == 1 and again.stats.cache_misses == 1
    assert again.text == first.text


def test_concurrent_requests_for_a_missing_segment_encode_it_once(srv, tiny, ns):
    text = f"A text only this test sends, number {uuid.uuid4().hex}."
    before = len(tiny.encoded)

    async def burst():
        req = SegpressClient.request([text], namespace=ns)
        return await asyncio.gather(*[srv.pipeline.compress(req) for _ in range(6)])

    results = srv.call(burst())
    assert len(tiny.encoded) - before == len(tiny.segment(text))
    assert len({r.text for r in results}) == 1


def test_a_lookup_that_missed_just_before_the_write_reuses_the_result(srv, tiny, redis_proc, ns,
                                                                      monkeypatch):
    # The race single flight must cover: request B's cache lookup is sent
    # before request A writes the value, so B sees a miss, and B reaches the
    # batcher after A has stored and released it. B must not encode again.
    monkeypatch.setattr("service.batcher.RELEASE_GRACE_S", 60.0)  # no timing in this test
    text = f"A text only this test sends, number {uuid.uuid4().hex}."
    srv.call(srv.pipeline.compress(SegpressClient.request([text], namespace=ns)))
    (key,) = [k.decode() for k in redis_proc.client().keys(f"segpress:v1:{ns}:tiny:*")]
    before = len(tiny.encoded)

    async def late_miss():
        return await srv.pipeline.values.batcher(tiny).encode({key: text})

    values, owned, reused = srv.call(late_miss())
    assert len(tiny.encoded) == before and owned == [] and reused == [key] and list(values) == [key]


@pytest.mark.parametrize("kwargs,code,words", [
    (dict(contexts=[]), grpc.StatusCode.INVALID_ARGUMENT, "contexts is empty"),
    (dict(contexts=["a"] * 5), grpc.StatusCode.RESOURCE_EXHAUSTED, "max_contexts=4"),
    (dict(contexts=["a"], compressor="nope"), grpc.StatusCode.INVALID_ARGUMENT, "unknown compressor"),
    (dict(contexts=["a"], rate=0.5), grpc.StatusCode.INVALID_ARGUMENT, "params for 'llmlingua2'"),
    (dict(contexts=["a"], namespace="bad ns"), grpc.StatusCode.INVALID_ARGUMENT, "namespace"),
    (dict(contexts=["a"], query=" "), grpc.StatusCode.INVALID_ARGUMENT, "query is set but empty"),
    (dict(contexts=["a"], query="why?"), grpc.StatusCode.INVALID_ARGUMENT, "selection is off"),
    (dict(contexts=["a"], query="why?", keep_rate=1.5), grpc.StatusCode.INVALID_ARGUMENT,
     "selection.keep_rate must be in (0, 1]"),
    # The query's bytes are bounded first, whether selection runs or not (issue 22).
    (dict(contexts=["a"], query="?" * 16385), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "query is more than 16384 bytes; the limit is max_query_bytes=16384"),
    (dict(contexts=["a"], query="\u20ac" * 5462), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "max_query_bytes=16384"),
    (dict(contexts=["a"], query="." * (4 << 20), selection=False), grpc.StatusCode.RESOURCE_EXHAUSTED,
     "max_query_bytes=16384"),
])
def test_bad_input_gets_a_precise_status(client, kwargs, code, words):
    contexts = kwargs.pop("contexts")
    with pytest.raises(SegpressError) as e:
        client.compress(contexts, **kwargs)
    assert e.value.code == code and words in e.value.details
    assert client.info().default_compressor == "tiny"  # still serving


def test_stream_keeps_order_and_isolates_a_bad_item(client, ns):
    reqs = [SegpressClient.request([t], namespace=ns) for t in (TEXT, OTHER)]
    reqs.insert(1, SegpressClient.request(["   "], namespace=ns))
    items = list(client.compress_stream(reqs))
    assert [i.index for i in items] == [0, 1, 2]
    assert items[1].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert items[0].response.contexts[0].original_tokens == len(TEXT.split())
    assert items[2].response.contexts[0].original_tokens == len(OTHER.split())


def test_the_smallest_compressor_in_the_docs_runs_through_the_pipeline(redis_proc, ns):
    """docs/architecture.md's example compressor, executed as written."""
    from conftest import ROOT

    doc = (ROOT / "docs" / "architecture.md").read_text()
    code = doc.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(code, scope)
    compressor = scope["EveryOther"]()
    assert isinstance(compressor, Compressor)
    config = Config(port=0, redis_url=redis_proc.url, metrics_port=0)
    s = InProcessServer(config, {"everyother": compressor})
    try:
        with SegpressClient(s.target, timeout_s=30) as c:
            first = c.compress(["  one two three four five "], namespace=ns)
            again = c.compress(["  one two three four five "], namespace=ns)
    finally:
        s.stop()
    assert first.text == again.text == "one three five"
    assert (first.stats.cache_misses, again.stats.cache_hits) == (1, 1)


def test_a_failing_segment_fails_only_its_own_requests():
    """Two requests' segments in one model call, one of which the model
    cannot encode: the call is retried segment by segment, so the other
    request gets its value and only the failing one its error."""
    from concurrent.futures import ThreadPoolExecutor

    from service.batcher import MicroBatcher

    class Failing(Tiny):
        def __init__(self):
            super().__init__()
            self.calls = []

        def encode(self, texts):
            self.calls.append(list(texts))
            if any("boom" in t for t in texts):
                raise RuntimeError("the model failed")
            return super().encode(texts)

    async def both(batcher):
        return await asyncio.gather(batcher.encode({"a": "good words"}), batcher.encode({"b": "boom"}),
                                    return_exceptions=True)

    model = Failing()
    with ThreadPoolExecutor(1) as pool:
        good, bad = asyncio.run(both(MicroBatcher(model, pool, max_segments=8)))
    assert model.calls == [["good words", "boom"], ["good words"], ["boom"]]  # one call, then each
    assert set(good[0]["a"]) == {"spans", "scores", "tokens"}
    assert isinstance(bad, RuntimeError) and "the model failed" in str(bad)

"""The gRPC service end to end: a real server process, a real Redis."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from segpress import SegpressClient, pb

from helpers import assert_faithful

UNICODE = ("Über Ärger: José's café in São Paulo serves 東京 ramen 🍜 and Ελληνικά "
           "dishes; Привет, мир! The CEO said “OK”. العربية עברית हिन्दी 👩‍🔬 done.")


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "segpress.v1.Segpress"):
            r = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"segpress.v1.Segpress", "grpc.health.v1.Health"} <= names


def test_info(client, model_dir):
    info = client.info()
    assert info.default_compressor == "llmlingua2"
    (c,) = info.compressors
    assert c.name == "llmlingua2" and c.output == pb.OUTPUT_KIND_TEXT
    assert c.model.id == model_dir and len(c.model.fingerprint) == 64
    assert c.max_segment_tokens <= 510
    assert info.limits.max_contexts == 16 and info.limits.max_request_bytes == 200000


def test_compress_is_faithful_and_reports_stats(client, sample_text):
    r = client.compress([sample_text], rate=0.33, request_id="req-1", cache="bypass")
    assert r.request_id == "req-1" and r.compressor == "llmlingua2"
    assert_faithful(sample_text, r.text)
    assert r.text == r.contexts[0].text
    s = r.stats
    assert s.compressed_tokens <= round(0.33 * s.original_tokens)
    assert s.ratio == pytest.approx(s.original_tokens / s.compressed_tokens)
    assert s.rate == pytest.approx(s.compressed_tokens / s.original_tokens)
    assert s.segments == r.contexts[0].segments >= 2
    assert s.cache_hits == 0 and s.cache_misses == s.segments
    assert s.timings.total_ms > 0 and s.timings.encode_ms > 0


def test_repeat_is_all_hits_and_identical(client, sample_text):
    text = sample_text + "\n\nThis copy ends with a sentence about repeat requests."
    ns = "repeat-test"  # other tests compress the sample too
    first = client.compress([text], rate=0.4, namespace=ns)
    second = client.compress([text], rate=0.4, namespace=ns)
    assert first.stats.cache_misses == first.stats.segments and first.stats.cache_hits == 0
    assert second.stats.cache_hits == second.stats.segments and second.stats.cache_misses == 0
    assert second.text == first.text and list(second.contexts) == list(first.contexts)
    # Another rate and another budget: the cached scores serve both.
    other = client.compress([text], rate=0.7, namespace=ns)
    budget = client.compress([text], target_tokens=50, namespace=ns)
    assert other.stats.cache_hits == other.stats.segments
    assert budget.stats.cache_hits == budget.stats.segments
    assert len(other.text) > len(first.text) and budget.stats.compressed_tokens <= 50
    # Words: the same cached scores, another selection. (Whole sentences
    # are the default without a query since issue 24.)
    words = client.compress([text], rate=0.4, granularity="word", namespace=ns)
    assert words.stats.cache_hits == words.stats.segments
    assert words.text != first.text
    sentences = client.compress([text], rate=0.4, granularity="sentence", namespace=ns)
    assert sentences.text == first.text
    assert "This copy ends with a sentence about repeat requests." in sentences.text \
        or "repeat requests" not in sentences.text  # kept whole or not at all
    with pytest.raises(ValueError, match="granularity must be one of"):
        client.compress([text], granularity="phrase")


def test_shared_context_is_a_hit_in_another_request(client):
    shared = "The harbour board approved the light in 1848 after a long debate."
    a = client.compress([shared, "An unrelated chunk about railways and timetables."])
    b = client.compress(["A third chunk about apples.", shared])
    assert a.stats.cache_hits == 0
    assert b.stats.cache_hits == 1 and b.stats.cache_misses == 1
    assert b.contexts[1] == a.contexts[0]


def test_namespaces_do_not_share_entries(client):
    text = "Tenant isolation: this sentence is cached per namespace only."
    assert client.compress([text], namespace="tenant-a").stats.cache_misses == 1
    assert client.compress([text], namespace="tenant-a").stats.cache_hits == 1
    assert client.compress([text], namespace="tenant-b").stats.cache_misses == 1


def test_refresh_recomputes_and_bypass_skips(client):
    text = "Cache modes: refresh recomputes, bypass neither reads nor writes."
    client.compress([text])
    assert client.compress([text], cache="refresh").stats.cache_misses == 1
    assert client.compress([text], cache="use").stats.cache_hits == 1
    fresh = "Bypassed text is never written to the cache at all."
    assert client.compress([fresh], cache="bypass").stats.cache_misses == 1
    assert client.compress([fresh]).stats.cache_misses == 1


def test_corrupt_cache_value_is_a_miss_with_the_same_output(client, redis_proc):
    text = "A value damaged in Redis must be recomputed, never served."
    good = client.compress([text], rate=0.5)
    r = redis_proc.client()
    keys = r.keys(b"segpress:v1:default:llmlingua2:*")
    for k in keys:
        v = bytearray(r.get(k))
        v[-1] ^= 0xFF
        r.set(k, bytes(v))
    again = client.compress([text], rate=0.5)
    assert again.stats.cache_misses == 1 and again.stats.cache_errors >= 1
    assert again.text == good.text


def test_unicode_comes_back_as_exact_substrings(client):
    for rate in (0.25, 0.5, 1.0):
        r = client.compress([UNICODE], rate=rate)
        assert_faithful(UNICODE, r.text)
    assert client.compress([UNICODE], rate=1.0).text == UNICODE


def test_stream_keeps_order_and_isolates_a_bad_item(client):
    texts = [f"Stream item number {i} talks about topic {i * 7}." for i in range(12)]
    reqs = [SegpressClient.request([t], rate=0.5, request_id=str(i)) for i, t in enumerate(texts)]
    reqs[5] = SegpressClient.request([""], request_id="5")
    out = list(client.compress_stream(iter(reqs)))
    assert [o.index for o in out] == list(range(12))
    assert out[5].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "contexts[0] is empty" in out[5].status.message
    assert not out[5].HasField("response")
    for i, o in enumerate(out):
        if i != 5:
            assert o.status.code == 0 and o.response.request_id == str(i)
            assert_faithful(texts[i], o.response.text)


def test_concurrent_identical_requests_all_succeed(server):
    from concurrent.futures import ThreadPoolExecutor

    text = "Eight clients ask for the same new text at the same time. " * 20
    with SegpressClient(server.target) as c:
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda _: c.compress([text], rate=0.5), range(8)))
    assert len({o.text for o in outs}) == 1

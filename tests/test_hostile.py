"""Hostile and careless clients against a real gRPC server and a real Redis
(in-process, with model-free compressors from tests/tiny.py, so these run in
the fast tier): streams that stay open without sending, streams cancelled
with work queued, responses over the message limit, a namespace with a line
break, cache values with a valid checksum that do not fit their segment, and
reflection without a token (issue 15)."""

import threading
import time
import uuid

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cache import codec
from compressors.base import Rendered
from segpress import SegpressClient, SegpressError
from segpress.v1 import segpress_pb2_grpc as pb_grpc
from service.config import Config

from helpers import InProcessServer, wait_until
from tiny import Tiny

TEXT = ("The harbour froze in the winter of 1902. Ships waited outside for eleven days, "
        "and the town ran short of coal. A rescue party crossed the ice on foot.")


class SlowTiny(Tiny):
    """Tiny whose model call takes 0.2 s, counting the calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def encode(self, texts):
        time.sleep(0.2)
        self.calls += 1
        return super().encode(texts)


class KeepAll(Tiny):
    """Tiny that keeps every word (as llmlingua2 does at rate 1.0)."""

    def render(self, contexts, params, query=None):
        return [Rendered(sum(s.n_tokens for s in c.segments), sum(s.n_tokens for s in c.segments),
                         text=c.text.strip()) for c in contexts]


def serve(redis_proc, compressor, **settings) -> InProcessServer:
    config = Config(port=0, redis_url=redis_proc.url, metrics_port=0, **settings)
    return InProcessServer(config, {compressor.name: compressor})


@pytest.fixture()
def ns():
    return "t-" + uuid.uuid4().hex[:12]


def blocked_requests(gate: threading.Event):
    """A request iterator that sends nothing until `gate` is set."""
    gate.wait()
    return
    yield


# -- streams -------------------------------------------------------------------


def test_idle_streams_hold_no_capacity_and_are_capped_and_ended(redis_proc, ns):
    srv = serve(redis_proc, Tiny(), max_queue=2, max_streams_per_client=3, stream_idle_s=1.0)
    gate = threading.Event()
    try:
        with grpc.insecure_channel(srv.target) as ch, SegpressClient(srv.target, timeout_s=10) as c:
            stub = pb_grpc.SegpressStub(ch)
            idle = [stub.CompressStream(blocked_requests(gate), timeout=30) for _ in range(3)]
            wait_until(lambda: sum(srv.running.servicer.streams.values()) == 3, "three open streams")
            # Three open streams that send nothing are not work in progress.
            assert c.compress([TEXT], namespace=ns).text
            info = c.info()
            assert info.limits.stream_idle_s == 1.0 and info.limits.max_streams_per_client == 3
            # A fourth stream from the same client is refused.
            with pytest.raises(grpc.RpcError) as e:
                list(stub.CompressStream(iter([SegpressClient.request([TEXT], namespace=ns)]),
                                         timeout=10))
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_streams_per_client=3" in e.value.details()
            # After stream_idle_s with nothing sent, the idle streams are ended...
            for call in idle:
                with pytest.raises(grpc.RpcError) as e:
                    list(call)
                assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "stream_idle_s=1" in e.value.details()
            # ... and a new stream works.
            items = list(c.compress_stream([SegpressClient.request([TEXT], namespace=ns)]))
            assert items[0].status.code == 0 and items[0].response.text
    finally:
        gate.set()
        srv.stop()


def test_a_stream_with_work_in_progress_is_not_idle(redis_proc, ns):
    slow = SlowTiny()
    srv = serve(redis_proc, slow, stream_idle_s=0.3, max_batch_segments=1)
    try:
        with SegpressClient(srv.target, timeout_s=30) as c:
            # Six segments of 0.2 s each: 1.2 s of work on one request, sent at once.
            text = " ".join(f"w{i}-{uuid.uuid4().hex[:6]}" for i in range(48))
            items = list(c.compress_stream([SegpressClient.request([text], namespace=ns)]))
            assert items[0].status.code == 0 and slow.calls >= 6
    finally:
        srv.stop()


def test_cancelling_a_stream_cancels_its_queued_work(redis_proc, ns):
    slow = SlowTiny()
    srv = serve(redis_proc, slow, max_batch_segments=1)
    try:
        texts = [" ".join(f"r{r}w{i}-{uuid.uuid4().hex[:6]}" for i in range(24)) for r in range(20)]
        with grpc.insecure_channel(srv.target) as ch:
            call = pb_grpc.SegpressStub(ch).CompressStream(
                iter([SegpressClient.request([t], namespace=ns) for t in texts]), timeout=60)
            wait_until(lambda: slow.calls >= 1, "the stream's first model call")
            call.cancel()
            at_cancel = slow.calls
        wait_until(lambda: srv.running.servicer.in_progress == 0, "the cancelled requests to end")
        with SegpressClient(srv.target, timeout_s=10) as c:
            # The model takes work in order: once this one-segment probe is
            # answered, whatever the stream had queued would have run. Allowed:
            # the call running at the cancel, and the probe's own. Before the
            # fix, every request read so far (8 of 3 segments) went on: 7 more.
            assert c.compress([f"probe {uuid.uuid4().hex}"], namespace=ns).text
            assert slow.calls - at_cancel <= 2, (at_cancel, slow.calls)
            assert c.compress(["Still serving."], namespace=ns).text
    finally:
        srv.stop()


def test_stream_items_over_max_queue_are_refused_one_by_one(redis_proc, ns):
    slow = SlowTiny()
    srv = serve(redis_proc, slow, max_queue=1, max_batch_segments=1)
    try:
        with SegpressClient(srv.target, timeout_s=30) as c:
            reqs = [SegpressClient.request([f"{TEXT} {uuid.uuid4().hex}"], namespace=ns)
                    for _ in range(3)]
            codes = [i.status.code for i in c.compress_stream(reqs)]
            # One runs; the others reach the queue while it is in progress
            # (which one is first depends on the threads that segment them),
            # and each is answered on its own: the stream goes on.
            assert len(codes) == 3 and 0 in codes
            assert grpc.StatusCode.UNAVAILABLE.value[0] in codes
    finally:
        srv.stop()


# -- responses over the message limit --------------------------------------------


def test_a_response_over_the_message_limit_is_resource_exhausted(redis_proc, ns, caplog):
    srv = serve(redis_proc, KeepAll(), max_message_bytes=64 << 10)
    text = " ".join(f"word{i}" for i in range(6000))  # 57 KB: the response holds it twice
    try:
        with SegpressClient(srv.target, timeout_s=30) as c:
            with caplog.at_level("INFO", logger="segpress.server"):
                with pytest.raises(SegpressError) as e:
                    c.compress([text], namespace=ns)
                for _ in range(50):  # the server logs the call just after answering it
                    lines = [r for r in caplog.records if getattr(r, "method", "") == "Compress"]
                    if lines:
                        break
                    time.sleep(0.05)
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_message_bytes=65536" in e.value.details
            assert [r.code for r in lines] == ["RESOURCE_EXHAUSTED"]
            # In a stream the item fails alone.
            reqs = [SegpressClient.request([text], namespace=ns),
                    SegpressClient.request([TEXT], namespace=ns)]
            items = list(c.compress_stream(reqs))
            assert items[0].status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            assert items[1].status.code == 0 and items[1].response.text == TEXT
    finally:
        srv.stop()


# -- namespace, cache values, reflection ----------------------------------------


@pytest.fixture(scope="module")
def tiny_srv(redis_proc):
    s = serve(redis_proc, Tiny())
    yield s
    s.stop()


@pytest.mark.parametrize("namespace", ["tenant\n", "tenant\r\n", "\ntenant", "ten\nant"])
def test_a_namespace_with_a_line_break_is_invalid(tiny_srv, redis_proc, namespace):
    with SegpressClient(tiny_srv.target, timeout_s=10) as c:
        with pytest.raises(SegpressError) as e:
            c.compress([f"{TEXT} {uuid.uuid4().hex}"], namespace=namespace)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "namespace must be" in e.value.details
    assert not [k for k in redis_proc.client().keys("segpress:*") if b"\n" in k]


def bad_values(n: int, length: int) -> dict:
    """Values with a valid checksum that do not fit a segment of n words in
    `length` characters."""
    spans = np.array([[0, 3]] * n, np.int32)
    ok = {"spans": spans, "scores": np.full(n, 0.9, np.float32), "tokens": np.ones(n, np.int32)}
    return {
        "all start at 0": ok,
        "short scores": {**ok, "scores": np.full(n - 1, 0.9, np.float32),
                         "spans": np.array([[i * 2, i * 2 + 1] for i in range(n)], np.int32)},
        "negative counts": {**ok, "tokens": np.full(n, -5, np.int32),
                            "spans": np.array([[i * 2, i * 2 + 1] for i in range(n)], np.int32)},
        "past the end": {**ok, "spans": np.array([[length + i, length + i + 1] for i in range(n)],
                                                 np.int32)},
        "nan scores": {**ok, "scores": np.full(n, np.nan, np.float32),
                       "spans": np.array([[i * 2, i * 2 + 1] for i in range(n)], np.int32)},
        "missing array": {"spans": ok["spans"], "scores": ok["scores"]},
    }


@pytest.mark.parametrize("case", list(bad_values(3, 10)))
def test_a_cache_value_that_does_not_fit_its_segment_is_a_miss_and_is_overwritten(
        tiny_srv, redis_proc, ns, case):
    text = f"{TEXT} {uuid.uuid4().hex}"
    with SegpressClient(tiny_srv.target, timeout_s=10) as c:
        first = c.compress([text], namespace=ns)
        r = redis_proc.client()
        keys = sorted(r.keys(f"segpress:v1:{ns}:tiny:*"))
        assert len(keys) == first.stats.segments
        good = codec.decode(Tiny.kind, r.get(keys[0]))
        r.set(keys[0], codec.encode(Tiny.kind, bad_values(len(good["scores"]), 10_000)[case]))
        again = c.compress([text], namespace=ns)
        assert again.text == first.text
        assert again.stats.cache_errors == 1 and again.stats.cache_misses == 1
        stored = codec.decode(Tiny.kind, r.get(keys[0]))  # overwritten with a good value
        assert all(np.array_equal(stored[k], good[k]) for k in good)
        assert c.compress([text], namespace=ns).stats.cache_hits == first.stats.segments


def reflection_names(target: str, metadata=()) -> set:
    with grpc.insecure_channel(target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=metadata, timeout=10))
    return {s.name for s in replies[0].list_services_response.service}


def test_reflection_needs_a_token_when_auth_is_on_and_health_does_not(redis_proc):
    srv = serve(redis_proc, Tiny(), auth_tokens="tok-a=tenant-a")
    try:
        with pytest.raises(grpc.RpcError) as e:
            reflection_names(srv.target)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            reflection_names(srv.target, [("authorization", "Bearer tok-x")])
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "segpress.v1.Segpress" in reflection_names(
            srv.target, [("authorization", "Bearer tok-a")])
        with grpc.insecure_channel(srv.target) as ch:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert r.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.stop()


def test_reflection_stays_open_without_auth(tiny_srv):
    assert "segpress.v1.Segpress" in reflection_names(tiny_srv.target)

"""Cached requests never queue behind model work (issue 22, item 9), against
a real gRPC server and a real Redis in process. The model and the CPU pool
are held at gates (tests/tiny.py's Gated), so each test checks where a
request waits, not how fast it is: a request whose values are all cached
completes while every model slot is taken and the model and the tokenizing
threads are blocked. The timings are measured by
`python -m service.benchmarks.fairness`."""

import threading
import uuid

import pytest

from segpress import SegpressClient
from service.config import Config

from helpers import InProcessServer, wait_until
from tiny import Gated

CACHED = ("The harbour froze in the winter of 1902. Ships waited outside for eleven days, "
          "and the town ran short of coal. A rescue party crossed the ice on foot.")


@pytest.fixture()
def ns():
    return "fair-" + uuid.uuid4().hex[:12]


class Held:
    """Requests sent from threads, held by the server at a gate."""

    def __init__(self, target: str):
        self.target, self.threads, self.results, self.errors = target, [], [], []

    def send(self, text: str, **kw) -> None:
        def run():
            with SegpressClient(self.target, timeout_s=120) as c:
                try:
                    self.results.append(c.compress([text], **kw))
                except Exception as e:  # noqa: BLE001 - asserted after the gates open
                    self.errors.append(e)

        t = threading.Thread(target=run)
        t.start()
        self.threads.append(t)

    def join(self) -> None:
        for t in self.threads:
            t.join(120)


def test_a_cached_request_completes_while_the_model_and_the_cpu_pool_are_held(redis_proc, ns):
    gated = Gated()
    srv = InProcessServer(Config(port=0, redis_url=redis_proc.url, metrics_port=0, max_queue=2),
                          {"gated": gated})
    held = Held(srv.target)
    try:
        gated.open()
        with SegpressClient(srv.target, timeout_s=30) as c:
            first = c.compress([CACHED], namespace=ns)
        gated.gate.clear()
        gated.segment_gate.clear()
        gated.entered.clear()
        # Every model slot taken, the model thread blocked in a forward pass ...
        for i in range(2):
            held.send(f"Cold request {i} {uuid.uuid4().hex} for the model.", namespace=ns)
        wait_until(lambda: gated.entered.is_set() and srv.pipeline.model_requests == 2,
                   "both model slots taken, the model blocked")
        # ... and both CPU pool threads blocked tokenizing new contexts.
        for i in range(2):
            held.send(f"HOLD cold context {i} {uuid.uuid4().hex}.", namespace=ns)
        for _ in range(2):
            assert gated.segmenting.acquire(timeout=60), "a HOLD context was never segmented"

        with SegpressClient(srv.target, timeout_s=30) as c:
            for _ in range(3):
                resp = c.compress([CACHED], namespace=ns)
                assert resp.text == first.text
                assert resp.stats.cache_misses == 0 and resp.stats.cache_hits == resp.stats.segments
            items = list(c.compress_stream([SegpressClient.request([CACHED], namespace=ns)]))
            assert items[0].status.code == 0 and items[0].response.text == first.text
        # Nothing held moved meanwhile.
        assert not held.results and srv.pipeline.model_requests == 2
        gated.open()
        held.join()
        assert not held.errors and len(held.results) == 4
    finally:
        gated.open()
        held.join()
        srv.stop()


def test_a_cached_query_request_does_not_wait_for_the_model_thread(
        redis_proc, sentence_vectors, ns):
    gated = Gated()
    srv = InProcessServer(Config(port=0, redis_url=redis_proc.url, metrics_port=0),
                          {"gated": gated}, sentence_vectors)
    held = Held(srv.target)
    try:
        gated.open()
        with SegpressClient(srv.target, timeout_s=60) as c:  # every value: all segments, vectors
            c.compress([CACHED, "Bread needs flour, water and salt."], namespace=ns)
            c.compress([CACHED, "Bread needs flour, water and salt."], namespace=ns,
                       query="When did the harbour freeze?")
        gated.gate.clear()
        gated.entered.clear()
        held.send(f"Cold request {uuid.uuid4().hex} for the model.", namespace=ns)
        wait_until(lambda: gated.entered.is_set(), "the model thread blocked")
        # The query's embedding is a model pass too: with every value cached
        # it runs beside the blocked model thread, not behind it.
        with SegpressClient(srv.target, timeout_s=60) as c:
            resp = c.compress([CACHED, "Bread needs flour, water and salt."], namespace=ns,
                              query="Who crossed the ice?")
        assert resp.stats.cache_misses == 0 and resp.stats.sentence_vector_misses == 0
        assert resp.contexts[0].rank == 0 and resp.contexts[0].text
        assert not held.results
        gated.open()
        held.join()
        assert not held.errors and len(held.results) == 1
    finally:
        gated.open()
        held.join()
        srv.stop()

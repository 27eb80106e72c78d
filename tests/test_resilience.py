"""Redis stopped mid-run and the embedded Redis, each with its own server
process. (Shutdown: test_load.py; other Redis faults: test_faults.py.)"""

import time

import pytest
from conftest import RedisProcess, ServerProcess

from segpress import SegpressClient


@pytest.fixture()
def own_redis():
    r = RedisProcess().start()
    yield r
    r.stop()


def test_redis_stopped_mid_run_requests_still_succeed_then_cache_recovers(own_redis, model_dir, tmp_path):
    server = ServerProcess({
        "SEGPRESS_REDIS_URL": own_redis.url,
        "SEGPRESS_LLMLINGUA2_MODEL": model_dir,
        "SEGPRESS_CACHE_DIR": str(tmp_path),
        "SEGPRESS_CACHE_RETRY_S": "0.3",
        "SEGPRESS_CACHE_TIMEOUT_S": "0.2",
    })
    try:
        with SegpressClient(server.target, timeout_s=30) as c:
            text = "Redis will stop in the middle of this test. The service must not notice."
            before = c.compress([text], rate=0.5)
            assert c.compress([text], rate=0.5).stats.cache_hits == 1

            own_redis.stop()
            for i in range(5):
                r = c.compress([text], rate=0.5)
                assert r.text == before.text
                assert r.stats.cache_hits == 0 and r.stats.cache_misses == 1
                assert r.stats.cache_errors >= 1
                other = c.compress([f"Request {i} while Redis is down."], rate=0.5)
                assert other.text

            own_redis.start()  # same port, empty; the loop below waits out the retry interval
            fresh = "Redis is back; this sentence is cached again."
            c.compress([fresh])  # may still see the old broken connection
            deadline = time.time() + 10
            while c.compress([fresh]).stats.cache_hits != 1:
                assert time.time() < deadline, "cache did not recover"
                time.sleep(0.3)
        assert "cache lookup failed" in server.output()
    finally:
        server.stop()


def test_embedded_redis_when_no_url(model_dir, tmp_path):
    server = ServerProcess({
        "SEGPRESS_REDIS_URL": "",
        "SEGPRESS_LLMLINGUA2_MODEL": model_dir,
        "SEGPRESS_CACHE_DIR": str(tmp_path),
    })
    try:
        with SegpressClient(server.target) as c:
            text = "The embedded Redis keeps this segment for the next request."
            assert c.compress([text]).stats.cache_misses == 1
            assert c.compress([text]).stats.cache_hits == 1
        assert (tmp_path / "segpress-redis.rdb").parent.exists()
        assert "started embedded Redis" in server.output()
    finally:
        assert server.stop() == 0

"""Redis faults and Redis Cluster: every request still succeeds with correct
output, and the cache comes back when Redis does."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import RedisProcess, ServerProcess

from segpress import SegpressClient


def start_server(model_dir, tmp_path, redis_url, **env):
    return ServerProcess({
        "SEGPRESS_REDIS_URL": redis_url,
        "SEGPRESS_LLMLINGUA2_MODEL": model_dir,
        "SEGPRESS_CACHE_DIR": str(tmp_path),
        "SEGPRESS_CACHE_RETRY_S": "0.3",
        "SEGPRESS_CACHE_TIMEOUT_S": "0.2",
        **env,
    })


def wait_for_hit(client, text, timeout_s=10):
    deadline = time.time() + timeout_s
    while client.compress([text]).stats.cache_hits != 1:
        assert time.time() < deadline, "cache did not recover"
        time.sleep(0.3)


def test_redis_down_at_start_then_up(model_dir, tmp_path):
    redis = RedisProcess()  # port chosen, not started
    server = start_server(model_dir, tmp_path, redis.url)
    try:
        with SegpressClient(server.target) as c:
            text = "Redis is not there when the server starts."
            first = c.compress([text])
            assert first.stats.cache_misses == 1 and first.stats.cache_errors >= 1
            redis.start()
            wait_for_hit(c, text)
            assert c.compress([text]).text == first.text
    finally:
        server.stop()
        redis.stop()


def test_redis_killed_under_concurrent_load(model_dir, tmp_path):
    redis = RedisProcess().start()
    server = start_server(model_dir, tmp_path, redis.url)
    texts = [f"Load item {i}: the keeper logged the weather at hour {i % 24}." for i in range(40)]
    try:
        with SegpressClient(server.target, timeout_s=30) as c:
            expected = {t: c.compress([t], cache="bypass").text for t in texts}
            errors, results = [], []

            def worker(k):
                for i in range(k, len(texts) * 3, 8):
                    t = texts[i % len(texts)]
                    try:
                        results.append(c.compress([t]).text == expected[t])
                    except Exception as e:  # noqa: BLE001 - counted, asserted below
                        errors.append(e)

            killer = threading.Timer(0.5, redis.stop)
            killer.start()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(worker, range(8)))
            killer.join()
            assert not errors and len(results) == len(texts) * 3 and all(results)
            redis.start()
            wait_for_hit(c, texts[0])
    finally:
        server.stop()
        redis.stop()


def test_slow_redis_is_a_miss_not_a_stall(model_dir, tmp_path):
    redis = RedisProcess().start()
    server = start_server(model_dir, tmp_path, redis.url)
    try:
        with SegpressClient(server.target) as c:
            text = "A paused Redis must not hold requests hostage."
            good = c.compress([text])
            redis.client().execute_command("CLIENT", "PAUSE", "3000", "ALL")
            t0 = time.time()
            slow = c.compress([text])
            elapsed = time.time() - t0
            assert slow.text == good.text
            assert slow.stats.cache_errors >= 1 and slow.stats.cache_misses == 1
            assert elapsed < 1.5, f"request took {elapsed:.2f}s with Redis paused for 3s"
            wait_for_hit(c, text, timeout_s=20)  # once the 3 s pause is over
    finally:
        server.stop()
        redis.stop()


def test_evicting_redis_still_gives_correct_output(model_dir, tmp_path, sample_text):
    redis = RedisProcess("--maxmemory", "1mb", "--maxmemory-policy", "allkeys-lru").start()
    server = start_server(model_dir, tmp_path, redis.url)
    try:
        with SegpressClient(server.target, timeout_s=60) as c:
            docs = [f"Copy {i}. {sample_text}" for i in range(16)]
            first = [c.compress([d], rate=0.4).text for d in docs]
            again = [c.compress([d], rate=0.4) for d in docs]
            assert [r.text for r in again] == first
            info = redis.client().info()
            assert info["evicted_keys"] > 0
            assert sum(r.stats.cache_misses for r in again) > 0  # evicted: recomputed
    finally:
        server.stop()
        redis.stop()


def test_redis_cluster_batch_lookups_span_slots(model_dir, tmp_path, redis_cluster):
    import redis

    server = start_server(model_dir, tmp_path, f"redis+cluster://127.0.0.1:{redis_cluster[0]}")
    try:
        with SegpressClient(server.target) as c:
            contexts = [f"Cluster context {i} about lighthouse number {i}." for i in range(12)]
            first = c.compress(contexts, rate=0.5)
            assert first.stats.cache_misses == 12 and first.stats.cache_errors == 0
            second = c.compress(contexts, rate=0.5)
            assert second.stats.cache_hits == 12 and second.text == first.text
        per_node = [redis.Redis(port=p).dbsize() for p in redis_cluster]
        assert sum(per_node) == 12 and sum(1 for n in per_node if n) >= 2, per_node
    finally:
        server.stop()

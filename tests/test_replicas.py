"""Replicas sharing one Redis (issue 22, item 8): single flight across
server processes through a lease per segment, and values and keys bound to
the deployment's secret. Real redis-server, real `segpress serve`
processes, the real model; model runs are counted from each server's
Prometheus metrics."""

import asyncio
import re
import threading
import time
import urllib.request

import pytest

from cache.keys import segment_key
from cache.signing import Signer
from cache.store import SegmentStore, connect, lease_key
from segpress import SegpressClient

from conftest import RedisProcess, ServerProcess, free_port
from helpers import segpress

SECRET = "replica-test-secret-0123456789"
TOKEN = "tok-a"  # tenant-a's token on the replicas with the secret
TEXT = ("Replicas that share one Redis should compute a segment once. The first to miss it "
        "takes a short lease; the others wait for its value. A replica that dies holding a lease "
        "only delays the others until the lease expires, then they compute it themselves.")


class Replica:
    def __init__(self, redis, model_dir, cache_dir, **env):
        self.metrics_port = free_port()
        self.server = ServerProcess({
            "SEGPRESS_REDIS_URL": redis.url, "SEGPRESS_LLMLINGUA2_MODEL": model_dir,
            "SEGPRESS_CACHE_DIR": str(cache_dir), "SEGPRESS_SELECTION": "false",
            "SEGPRESS_METRICS_PORT": str(self.metrics_port), **env})

    def client(self, token: str | None = TOKEN) -> SegpressClient:
        return SegpressClient(self.server.target, timeout_s=120, token=token)

    def metric(self, name: str) -> float:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=5).read().decode()
        m = re.search(re.escape(name) + r" ([0-9.e+]+)", body)
        return float(m.group(1)) if m else 0.0

    def encoded(self) -> float:
        """Segments this process has run through the model."""
        return self.metric("segpress_model_batch_segments_sum")

    def leases(self, outcome: str) -> float:
        return self.metric(f'segpress_cache_leases_total{{outcome="{outcome}"}}')


@pytest.fixture(scope="module")
def redis():
    r = RedisProcess().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def replicas(redis, model_dir, tmp_path_factory):
    """Two replicas with the secret and auth (tok-a -> tenant-a)."""
    made = []
    try:
        for _ in range(2):
            made.append(Replica(redis, model_dir, tmp_path_factory.mktemp("cache"),
                                SEGPRESS_CACHE_SECRET=SECRET,
                                SEGPRESS_AUTH_TOKENS=f"{TOKEN}=tenant-a"))
        yield made
    finally:
        for r in made:
            r.server.stop()


def new_keys(redis, before: set) -> list[bytes]:
    return sorted(set(redis.client().keys(b"segpress:v1:tenant-a:*")) - before)


def tenant_keys(redis) -> set:
    return set(redis.client().keys(b"segpress:v1:tenant-a:*"))


def cached(redis, replica, text) -> tuple:
    """Sends `text` to `replica` once (cold); returns the response and the
    keys and stored values it wrote."""
    before = tenant_keys(redis)
    with replica.client() as c:
        resp = c.compress([text], rate=0.5)
    keys = new_keys(redis, before)
    assert len(keys) == resp.stats.segments == resp.stats.cache_misses
    return resp, {k: redis.client().get(k) for k in keys}


# -- two replicas, one cold request at once ---------------------------------------


def test_segment_missed_on_both_at_once_is_computed_once(replicas):
    text = " ".join(f"Paragraph {i}: {TEXT.replace('Redis', f'Redis number {i}')}"
                    for i in range(12))  # distinct sentences: several segments
    start, out = threading.Barrier(2), [None, None]

    def send(i):
        with replicas[i].client() as c:
            start.wait()
            out[i] = c.compress([text], rate=0.5)

    before = [r.encoded() for r in replicas]
    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    segments = out[0].stats.segments
    assert segments > 1 and out[0].text == out[1].text
    computed = sum(r.encoded() - b for r, b in zip(replicas, before))
    assert computed == segments, f"{computed} model runs for {segments} segments"


def test_a_replica_waits_for_the_lease_holders_value(redis, replicas):
    """A lease held elsewhere: the replica computes nothing and answers with
    the value the holder writes."""
    text = TEXT + " Waiting for the holder."
    first, values = cached(redis, replicas[0], text)
    r = redis.client()
    r.delete(*values)
    for k in values:
        r.set(lease_key(k.decode()), "another-replica", px=60_000)
    polls = r.info("commandstats").get("cmdstat_exists", {}).get("calls", 0)
    encoded, waited = replicas[1].encoded(), replicas[1].leases("waited")
    got = {}

    def send():
        with replicas[1].client() as c:
            got["resp"] = c.compress([text], rate=0.5)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 120  # a bound on a hang, not a speed target
    while r.info("commandstats").get("cmdstat_exists", {}).get("calls", 0) == polls:
        assert time.monotonic() < deadline and sender.is_alive(), "the replica never waited"
        time.sleep(0.01)  # until the replica polls the lease (only waiting does)
    r.mset(values)  # the holder writes its values
    sender.join()
    assert got["resp"].text == first.text
    assert replicas[1].encoded() == encoded
    assert replicas[1].leases("waited") - waited == len(values)


def test_an_expired_lease_means_computing_it_here(redis, replicas):
    text = TEXT + " The holder died."
    first, values = cached(redis, replicas[0], text)
    r = redis.client()
    r.delete(*values)
    for k in values:  # a holder that never writes: its leases run out
        r.set(lease_key(k.decode()), "a-dead-replica", px=1500)
    encoded, expired = replicas[1].encoded(), replicas[1].leases("expired")
    with replicas[1].client() as c:
        again = c.compress([text], rate=0.5)
    assert again.text == first.text
    assert replicas[1].leases("expired") - expired == len(values)
    assert replicas[1].encoded() - encoded == len(values)
    signer = Signer(SECRET.encode())
    assert all(signer.verify(k.decode(), r.get(k)) is not None for k in values)
    assert not any(r.exists(lease_key(k.decode())) for k in values)


# -- values and keys bound to the secret -------------------------------------------


@pytest.mark.parametrize("damage", ["flipped byte", "copied from another key", "unsigned",
                                    "planted by a writer without the secret"])
def test_a_planted_or_tampered_value_is_a_miss_and_overwritten(redis, replicas, damage):
    text = f"{TEXT} Damage: {damage}. A second sentence gives it more words to keep or drop."
    first, values = cached(redis, replicas[0], text)
    r, signer = redis.client(), Signer(SECRET.encode())
    _, other = cached(redis, replicas[0], TEXT + f" Another text for {damage}.")
    donor = next(iter(other.values()))
    for k, v in values.items():
        if damage == "flipped byte":
            bad = v[:-1] + bytes([v[-1] ^ 0xFF])
        elif damage == "copied from another key":
            bad = donor  # validly signed, for another key
        elif damage == "unsigned":
            bad = signer.verify(k.decode(), v)  # the right value without its tag
        else:  # signed with another secret
            bad = Signer(b"not-the-deployment-secret").sign(k.decode(), signer.verify(k.decode(), v))
        r.set(k, bad)
    rejected = replicas[1].metric("segpress_cache_rejected_total")
    with replicas[1].client() as c:
        again = c.compress([text], rate=0.5)
    assert again.text == first.text
    assert again.stats.cache_misses == len(values) and again.stats.cache_errors >= len(values)
    assert replicas[1].metric("segpress_cache_rejected_total") - rejected == len(values)
    assert {k: r.get(k) for k in values} == values  # overwritten with the right values
    with replicas[0].client() as c:
        assert c.compress([text], rate=0.5).stats.cache_hits == len(values)


def test_a_replica_without_the_secret_cannot_read_tenants(redis, replicas, model_dir, tmp_path):
    text = TEXT + " A tenant's private text."
    first, values = cached(redis, replicas[0], text)
    outsider = Replica(redis, model_dir, tmp_path)  # no secret, no auth
    try:
        before = tenant_keys(redis)
        with outsider.client(token=None) as c:
            resp = c.compress([text], rate=0.5, namespace="tenant-a")
        assert resp.text == first.text
        assert resp.stats.cache_hits == 0 and resp.stats.cache_misses == len(values)
        # It wrote plain keys of its own, which the replicas never address.
        assert len(new_keys(redis, before)) == len(values)
    finally:
        outsider.server.stop()
    with replicas[1].client() as c:
        assert c.compress([text], rate=0.5).stats.cache_hits == len(values)


# -- configuration and keys, without the model ------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env", "file"])
def test_a_short_secret_is_a_usage_error(how, tmp_path):
    short = "fifteen-bytes.."
    args, env = ["serve", "--port", "0"], {}
    if how == "flag":
        args += ["--cache-secret", short]
    elif how == "env":
        env["SEGPRESS_CACHE_SECRET"] = short
    else:
        (tmp_path / "secret").write_text(short + "\n")
        args += ["--cache-secret-file", str(tmp_path / "secret")]
    import os

    r = segpress(*args, env={**os.environ, **env}, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "15 bytes" in r.stderr and "at least 16 bytes" in r.stderr


def test_keys_without_a_secret_are_unchanged_and_with_one_derived():
    plain = segment_key("tenant-a", "llmlingua2", "fp", "Some text.")
    assert plain == ("segpress:v1:tenant-a:llmlingua2:"
                     "e8fcfc627d0bfd4397280ac64bb4c9f9243657f6f0ee0b80b8f26ceabea06baf")
    a = segment_key("tenant-a", "llmlingua2", "fp", "Some text.", Signer(SECRET.encode()))
    b = segment_key("tenant-a", "llmlingua2", "fp", "Some text.", Signer(b"x" * 16))
    assert len({plain, a, b}) == 3 and a.startswith("segpress:v1:tenant-a:llmlingua2:")
    assert a == segment_key("tenant-a", "llmlingua2", "fp", "Some text.", Signer(SECRET.encode()))
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Signer(b"short")


def test_a_tag_binds_a_value_to_its_key():
    s = Signer(SECRET.encode())
    stored = s.sign("k1", b"value")
    assert s.verify("k1", stored) == b"value"
    assert s.verify("k2", stored) is None
    assert s.verify("k1", stored[:-1] + b"w") is None
    assert s.verify("k1", b"value") is None
    assert Signer(b"y" * 16).verify("k1", stored) is None


def test_leases_in_the_store(redis):
    """One holder per key; release only by the holder; waiting ends with the
    value, or as expired when the lease goes without one; a Redis that is
    down fails leases without raising."""
    asyncio.run(check_leases(redis.url, redis.client()))


def test_leases_on_a_redis_cluster(redis_cluster):
    """The same on a 3-master cluster: the key and its lease hash to
    different slots, every command goes to its own node."""
    import redis as redis_py

    raw = redis_py.RedisCluster(host="127.0.0.1", port=redis_cluster[0])
    asyncio.run(check_leases(f"redis+cluster://127.0.0.1:{redis_cluster[0]}", raw))


async def check_leases(url: str, raw) -> None:
    keys = [f"segpress:v1:t:c:{i}" for i in range(1, 4)]  # spread over slots
    store = SegmentStore(connect(url, 1.0), 60, 1.0, lease_s=0.5)
    try:
        a = await store.take_leases(keys[:2])
        b = await store.take_leases(keys[:2])
        assert a.won == keys[:2] and not a.lost and not a.failed
        assert b.lost == a.won and not b.won
        await store.release_leases(a.won, b.token)  # not b's to release
        assert raw.exists(lease_key(keys[0]))
        await store.put_many({keys[0]: b"one"})
        await store.release_leases([keys[0]], a.token)
        waited = await store.wait_for(keys[:2])
        assert waited.values == {keys[0]: b"one"}
        assert waited.expired == [keys[1]]  # its lease ran out, no value
        c = await store.take_leases([keys[0]])
        assert c.found == {keys[0]: b"one"} and not c.won
        assert not raw.exists(lease_key(keys[0]))
    finally:
        await store.close()
    down = SegmentStore(connect(f"redis://127.0.0.1:{free_port()}/0", 0.5), 60, 0.5, lease_s=1)
    try:
        d = await down.take_leases([keys[2]])
        assert d.failed == [keys[2]] and not d.won and not d.lost
    finally:
        await down.close()

"""The segment store: batched reads and writes of encoded segments in Redis.

Every Redis problem (down, timeout, refused, cluster moved) is a miss: the
request still succeeds, a warning is logged and `errors` is counted. After a
failure the store skips Redis for `retry_after_s`, so a dead Redis costs one
timeout per interval rather than one per request; the next operation after
that interval tries again, so the cache recovers by itself.

With a Signer (--cache-secret, cache/signing.py) every value is written with
its HMAC tag and checked on read: a value whose tag fails is a miss, counted
as rejected, and the caller computes and overwrites it.

Leases (--cache-lease-s) make single flight work across replicas that share
this Redis: see take_leases, wait_for and release_leases.
"""

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

log = logging.getLogger("segpress.cache")


def connect(url: str, timeout_s: float):
    """A Redis client for `url`.

    redis://host:port/db, rediss://... (TLS), unix:///path/to.sock: one node.
    redis+cluster://host:port or rediss+cluster://host:port: Redis Cluster,
    seeded from that node.
    """
    opts = dict(socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    if "+cluster://" in url:
        return RedisCluster.from_url(url.replace("+cluster://", "://", 1), **opts)
    return aioredis.Redis.from_url(url, **opts)


LEASE_PREFIX = "segpress:lease:"
# Compare-and-delete: a lease is released only by the holder of its token,
# never after it expired and another replica took it.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
POLL_FIRST_S, POLL_MAX_S = 0.005, 0.05  # waiting for another replica's value


def lease_key(key: str) -> str:
    """The lease of segment key `key` (segpress:v1:... -> segpress:lease:v1:...)."""
    return LEASE_PREFIX + key.split(":", 1)[1]


@dataclass
class Leases:
    """What take_leases found for a request's missing keys."""

    token: str
    won: list[str] = field(default_factory=list)     # this request computes and writes them
    lost: list[str] = field(default_factory=list)    # another holder is computing them
    found: dict[str, bytes] = field(default_factory=dict)  # written just before the lease
    failed: list[str] = field(default_factory=list)  # Redis failed: compute without a lease


@dataclass
class Waited:
    """What wait_for got for lost keys."""

    values: dict[str, bytes] = field(default_factory=dict)  # the holder's values
    expired: list[str] = field(default_factory=list)  # lease gone or timed out, no value
    failed: list[str] = field(default_factory=list)   # Redis failed while waiting


class SegmentStore:
    def __init__(self, client, ttl_s: int, timeout_s: float, retry_after_s: float = 1.0,
                 signer=None, lease_s: float = 0.0):
        self.client = client
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.signer = signer  # cache.signing.Signer, or None: values stored as they are
        self.lease_s = lease_s  # 0: no leases (single flight per process only)
        self._skip_until = 0.0

    async def get_many(self, keys: list[str]) -> tuple[list[bytes | None], int, int]:
        """Values for `keys` in order (None for a miss), the error count, and
        how many values were rejected (their tag failed; also misses)."""
        if not keys:
            return [], 0, 0
        try:
            values = await self._run(self._mget(keys))
        except _Skipped:
            return [None] * len(keys), 1, 0
        except Exception as e:  # noqa: BLE001 - every Redis failure is a miss
            self._failed("lookup", e)
            return [None] * len(keys), 1, 0
        out = [self._open(k, v) for k, v in zip(keys, values)]
        rejected = sum(1 for v, o in zip(values, out) if v is not None and o is None)
        return out, 0, rejected

    async def put_many(self, items: dict[str, bytes]) -> int:
        """Stores `items` with the TTL; returns the error count (0 or 1)."""
        if not items:
            return 0
        if self.signer is not None:
            items = {k: self.signer.sign(k, v) for k, v in items.items()}
        try:
            await self._run(self._mset(items))
        except _Skipped:
            return 1
        except Exception as e:  # noqa: BLE001
            self._failed("store", e)
            return 1
        return 0

    async def close(self) -> None:
        await self.client.aclose()

    # -- leases: single flight across replicas ----------------------------------

    async def take_leases(self, keys: list[str]) -> Leases:
        """Tries a lease on each of `keys` (SET NX PX, lease_s), reading the
        value in the same round trip: a value written since the lookup is
        found (its lease, if just won, released) rather than computed again.
        On a Redis failure every key is `failed`: the caller computes them
        itself; a lease never fails a request."""
        leases = Leases(secrets.token_hex(16))
        if not keys:
            return leases

        async def run():
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                pipe.set(lease_key(k), leases.token, nx=True, px=max(1, int(self.lease_s * 1000)))
                pipe.get(k)
            return await pipe.execute()

        try:
            replies = await self._run(run())
        except _Skipped:
            leases.failed = list(keys)
            return leases
        except Exception as e:  # noqa: BLE001
            self._failed("lease", e)
            leases.failed = list(keys)
            return leases
        for i, k in enumerate(keys):
            won, value = replies[2 * i], self._open(k, replies[2 * i + 1])
            if value is not None:
                leases.found[k] = value
                if won:
                    await self.release_leases([k], leases.token)
            elif won:
                leases.won.append(k)
            else:
                leases.lost.append(k)
        return leases

    async def wait_for(self, keys: list[str]) -> Waited:
        """Polls for the values of `keys` whose lease another holder has,
        with backoff (5 ms growing to 50 ms), until each is written, or its
        lease is gone with no value (the holder died, failed or never
        wrote), or 2 x lease_s pass: those are `expired`, and the caller
        computes them itself. A value whose tag fails counts as none."""
        out = Waited()
        pending = list(keys)
        deadline = time.monotonic() + 2 * self.lease_s
        pause = POLL_FIRST_S
        while pending:
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL_MAX_S)

            async def run(keys=pending):
                pipe = self.client.pipeline(transaction=False)
                for k in keys:
                    pipe.get(k)
                    pipe.exists(lease_key(k))
                return await pipe.execute()

            try:
                replies = await self._run(run())
            except _Skipped:
                out.failed += pending
                return out
            except Exception as e:  # noqa: BLE001
                self._failed("lease wait", e)
                out.failed += pending
                return out
            left = []
            for i, k in enumerate(pending):
                value, held = self._open(k, replies[2 * i]), replies[2 * i + 1]
                if value is not None:
                    out.values[k] = value
                elif held:
                    left.append(k)
                else:
                    out.expired.append(k)
            pending = left
            if pending and time.monotonic() >= deadline:
                out.expired += pending
                break
        return out

    async def release_leases(self, keys: list[str], token: str) -> None:
        """Lets go of the leases on `keys` that `token` still holds (after
        their values are written, or when they will not be). A failure is
        logged only: the leases expire by themselves."""
        if not keys:
            return

        async def run():
            pipe = self.client.pipeline(transaction=False)
            for k in keys:
                pipe.eval(_RELEASE, 1, lease_key(k), token)
            return await pipe.execute()

        try:
            await self._run(run())
        except _Skipped:
            pass
        except Exception as e:  # noqa: BLE001
            self._failed("lease release", e)

    # -- internals ---------------------------------------------------------

    async def _mget(self, keys):
        if isinstance(self.client, RedisCluster):
            # Keys hash to different slots: the cluster client splits the
            # lookup per node and reassembles the order.
            return await self.client.mget_nonatomic(keys)
        return await self.client.mget(keys)

    async def _mset(self, items):
        # A non-transactional pipeline of SETs: one round trip per node, and
        # valid across cluster slots.
        pipe = self.client.pipeline(transaction=False)
        for key, value in items.items():
            pipe.set(key, value, ex=self.ttl_s if self.ttl_s > 0 else None)
        await pipe.execute()

    def _open(self, key: str, stored: bytes | None) -> bytes | None:
        """The value as stored, its tag checked and removed (with a signer)."""
        if stored is None or self.signer is None:
            return stored
        return self.signer.verify(key, stored)

    async def _run(self, coro):
        if time.monotonic() < self._skip_until:
            coro.close()
            raise _Skipped()
        return await asyncio.wait_for(coro, self.timeout_s)

    def _failed(self, what: str, e: Exception) -> None:
        self._skip_until = time.monotonic() + self.retry_after_s
        log.warning(
            "cache %s failed, serving without cache for %.1fs: %s: %s",
            what, self.retry_after_s, type(e).__name__, e,
        )


class _Skipped(Exception):
    """Redis failed recently; this operation was not attempted."""

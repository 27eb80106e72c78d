"""The segment store: batched reads and writes of encoded segments in Redis.

Every Redis problem (down, timeout, refused, cluster moved) is a miss: the
request still succeeds, a warning is logged and `errors` is counted. After a
failure the store skips Redis for `retry_after_s`, so a dead Redis costs one
timeout per interval rather than one per request; the next operation after
that interval tries again, so the cache recovers by itself.
"""

import asyncio
import logging
import time

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


class SegmentStore:
    def __init__(self, client, ttl_s: int, timeout_s: float, retry_after_s: float = 1.0):
        self.client = client
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._skip_until = 0.0

    async def get_many(self, keys: list[str]) -> tuple[list[bytes | None], int]:
        """Values for `keys` in order (None for a miss), and the error count."""
        if not keys:
            return [], 0
        try:
            values = await self._run(self._mget(keys))
        except _Skipped:
            return [None] * len(keys), 1
        except Exception as e:  # noqa: BLE001 - every Redis failure is a miss
            self._failed("lookup", e)
            return [None] * len(keys), 1
        return list(values), 0

    async def put_many(self, items: dict[str, bytes]) -> int:
        """Stores `items` with the TTL; returns the error count (0 or 1)."""
        if not items:
            return 0
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

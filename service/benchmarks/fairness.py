"""Cached requests under model load (issue 22, item 9), against a real
`segpress serve` process with an embedded Redis.

    python -m service.benchmarks.fairness                  # plain and query load
    python -m service.benchmarks.fairness --complm         # plus complm requests
    python -m service.benchmarks.fairness --clients 32 --probes 200 --json

A probe client sends requests whose segments are all cached (a plain one and,
alternately, one with a new question over cached contexts), one after
another, `--probes` of them: first on the idle server, then while `--clients`
clients keep the server saturated with cold model work (each request a new
document of about 620 tokens: plain, with a query, and with --complm a complm
request, in turn). It prints p50/p99 of the probes, idle and under load, side
by side, and what the load clients got meanwhile.
"""

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from segpress import Retry, SegpressClient, SegpressError

from ..config import SAMPLE, Config
from .limits import Server


def cold_text(sample: str) -> str:
    """A document no request sent before: every line carries a new tag, so
    every segment is a cache miss."""
    tag = uuid.uuid4().hex[:10]
    return "\n".join(f"[{tag}] {line}" if line.strip() else line for line in sample.splitlines())


def percentiles(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(p99, 1),
            "max_ms": round(ms[-1], 1)}


def probe(target: str, contexts: list[str], n: int, check: bool = True) -> list[float]:
    """Latencies of n cached requests, sent one after another; each is
    checked to have been all hits (unless not `check`: the warm-up)."""
    out = []
    with SegpressClient(target, timeout_s=120, retry=Retry(attempts=1)) as c:
        for i in range(n):
            query = f"Question {i}: who kept the lighthouse?" if i % 2 else None
            t0 = time.perf_counter()
            resp = c.compress(contexts, rate=0.5, query=query)
            out.append(time.perf_counter() - t0)
            if check and (resp.stats.cache_misses or resp.stats.sentence_vector_misses):
                raise RuntimeError(f"probe {i} was not all cache hits: {resp.stats}")
    return out


def load(target: str, sample: str, kinds: list[str], stop: threading.Event, k: int,
         done: dict) -> None:
    """One load client: cold requests of each kind in turn until `stop`."""
    with SegpressClient(target, timeout_s=600, retry=Retry(attempts=1)) as c:
        for kind in itertools.islice(itertools.cycle(kinds), k, None):
            if stop.is_set():
                return
            t0 = time.perf_counter()
            try:
                if kind == "query":
                    c.compress([cold_text(sample)], rate=0.5, query="Who kept the lighthouse?")
                elif kind == "complm":
                    c.compress([cold_text(sample)], compressor="complm")
                else:
                    c.compress([cold_text(sample)], rate=0.5)
                done.setdefault(kind, []).append(time.perf_counter() - t0)
            except SegpressError as e:
                done.setdefault(f"{kind} {e.code.name}", []).append(time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service.benchmarks.fairness", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32, help="load clients")
    ap.add_argument("--probes", type=int, default=200, help="cached requests per phase")
    ap.add_argument("--complm", action="store_true", help="load complm requests too")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    sample = SAMPLE.read_text(encoding="utf-8")
    models = Path(Config().models_dir)
    cache_dir = Path(tempfile.mkdtemp(prefix="segpress-fairness-"))
    (cache_dir / "models").symlink_to(models)  # built models shared, Redis data fresh
    kinds = ["plain", "query"] + (["complm"] if args.complm else [])
    env = {"SEGPRESS_CACHE_DIR": str(cache_dir), "SEGPRESS_MAX_QUEUE": str(4 * args.clients),
           "SEGPRESS_COMPRESSORS": "llmlingua2,complm" if args.complm else "llmlingua2"}
    server = Server(env)
    try:
        contexts = [p for p in sample.split("\n\n") if p.strip()]
        probe(server.target, contexts, 2, check=False)  # warm: values and sentence vectors cached
        idle = probe(server.target, contexts, args.probes)

        stop, done = threading.Event(), {}
        clients = [threading.Thread(target=load, args=(server.target, sample, kinds, stop, k, done))
                   for k in range(args.clients)]
        t0 = time.perf_counter()
        for t in clients:
            t.start()
        # The load is on once every client has had a request answered or
        # the model has been busy for a while; the probes start then.
        while sum(len(v) for v in done.values()) < args.clients and time.perf_counter() - t0 < 60:
            time.sleep(0.2)
        loaded = probe(server.target, contexts, args.probes)
        stop.set()
        for t in clients:
            t.join()
    finally:
        server.close()

    result = {"clients": args.clients, "load": kinds, "cached_idle": percentiles(idle),
              "cached_under_load": percentiles(loaded),
              "load_requests": {k: percentiles(v) for k, v in sorted(done.items())}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"cached requests ({len(contexts)} contexts, all hits; every other one with a new "
          f"query), {args.probes} per phase; load: {args.clients} clients of "
          f"{', '.join(kinds)} cold requests")
    print("| phase | p50 | p99 | max |")
    print("| --- | ---: | ---: | ---: |")
    for name, r in (("idle", result["cached_idle"]), ("under load", result["cached_under_load"])):
        print(f"| {name} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['max_ms']:.1f} ms |")
    for kind, r in result["load_requests"].items():
        print(f"load {kind}: {r['n']} requests, p50 {r['p50_ms'] / 1000:.2f} s, "
              f"p99 {r['p99_ms'] / 1000:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

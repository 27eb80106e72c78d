"""What refusing hostile input costs: every request limit, a request 10x over
it, against a real `segpress serve` process.

    python -m service.benchmarks.limits            # the table (docs/security.md)
    python -m service.benchmarks.limits --json
    python -m service.benchmarks.limits --only request_tokens force_token_bytes

For each case the server's peak RSS is reset (/proc/PID/clear_refs), the
request is sent, and the table reports the status it got, the time from
sending to the answer, how far the server's peak RSS rose above its RSS
before the request, and how much RSS it still holds afterwards. Each case
runs `--repeats` times; the medians are reported. Servers run the default
settings (embedded Redis, default model) except where a 10x input could not
even be sent: the byte limit case runs a server with --max-request-bytes
1048576 so that 10x it stays under max_message_bytes.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import grpc

from segpress import AsyncSegpressClient, SegpressClient, SegpressError, pb

from ..config import Config

MiB = 1 << 20


@dataclass
class Case:
    name: str
    limit: str             # the setting, as Info and the flags name it
    enforced_by: str       # where the refusal happens
    input: str             # what is sent
    request: object        # () -> what to send; see run_case
    env: dict = field(default_factory=dict)  # server settings for this case
    kind: str = "unary"    # unary, streams


def _words(n: int) -> str:
    return "a " * n


def cases(info: pb.InfoResponse | None = None) -> list[Case]:
    lim = info.limits if info is not None else None
    tokens = 400_000
    per_client = getattr(lim, "max_streams_per_client", 0) or 16
    force_bytes = getattr(lim, "max_force_token_bytes", 0) or 256
    return [
        Case("contexts", "max_contexts=256", "validate (count)",
             "2,560 contexts", lambda: SegpressClient.request(["A short context."] * 2560)),
        Case("request_bytes", "max_request_bytes=1 MiB", "validate (UTF-8 bytes)",
             "one 10 MiB context", lambda: SegpressClient.request([_words(5 * MiB)]),
             env={"SEGPRESS_MAX_REQUEST_BYTES": str(MiB)}),
        Case("message_bytes", "max_message_bytes=16 MiB", "gRPC (receive limit)",
             "a 160 MiB message", lambda: SegpressClient.request(["a" * (160 * MiB)])),
        Case("request_tokens", "max_request_tokens=400000", "segment (count before tokenizing)",
             "4,000,000 words (8 MB)", lambda: SegpressClient.request([_words(10 * tokens)])),
        Case("request_tokens_unspaced", "max_request_tokens=400000",
             "segment (count in bounded pieces)",
             "4,000,000 tokens of Hangul (4 MB)",
             lambda: SegpressClient.request(["\ud55c\uad6d\uc5b4 " * (10 * tokens // 8)])),
        Case("force_tokens", "max_force_tokens=100", "validate (llmlingua2 params)",
             "1,000 force_tokens", lambda: SegpressClient.request(
                 ["Alpha beta gamma."], force_tokens=[f"t{i}" for i in range(1000)])),
        Case("force_token_bytes", f"max_force_token_bytes={force_bytes}",
             "validate (llmlingua2 params)", f"a force token of {10 * force_bytes} bytes",
             lambda: SegpressClient.request(["Alpha beta gamma."],
                                            force_tokens=["x" * (10 * force_bytes)])),
        Case("force_tokens_1mib", f"max_force_token_bytes={force_bytes}",
             "validate (llmlingua2 params)", "4 force tokens of 1 MiB (issue 15)",
             lambda: SegpressClient.request(["Alpha beta gamma, a 70-byte context of words."],
                                            force_tokens=[c * MiB for c in "wxyz"])),
        Case("query_bytes", "max_query_bytes=16 KiB", "validate (query length, before tokenizing)",
             "8 MB of '.' in 80 words (issue 22)",
             lambda: SegpressClient.request(["A short context."], query=("." * 100_000 + " ") * 80)),
        Case("query_tokens", "max_query_tokens=254", "CPU pool (query of at most 16 KiB counted)",
             "16 KiB of '.': 16,384 tokens in one word",
             lambda: SegpressClient.request(["A short context."], query="." * 16384)),
        Case("namespace", "namespace: 128 characters", "validate",
             "1,280 characters", lambda: SegpressClient.request(["x"], namespace="n" * 1280)),
        Case("request_id", "request_id: 128 bytes", "validate",
             "1,280 bytes", lambda: SegpressClient.request(["x"], request_id="r" * 1280)),
        Case("streams", f"max_streams_per_client={per_client}", "server (per token or peer)",
             f"{10 * per_client} open CompressStreams", lambda: 10 * per_client, kind="streams"),
    ]


class Server:
    """`segpress serve` on a free port with an embedded Redis; its RSS from /proc."""

    def __init__(self, env: dict):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"
        cache_dir = os.environ.get("SEGPRESS_CACHE_DIR")
        if not cache_dir:  # a fresh Redis, but the models already built (no export at start)
            cache_dir = tempfile.mkdtemp(prefix="segpress-limits-")
            os.symlink(Config().models_dir, os.path.join(cache_dir, "models"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
            env={**os.environ, "SEGPRESS_METRICS_PORT": "0", "SEGPRESS_CACHE_DIR": cache_dir, **env},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while True:
            try:
                with SegpressClient(self.target, timeout_s=2) as c:
                    self.info = c.info()
                    c.compress(["Warm up the model and the cache once."])
                return
            except Exception:  # noqa: BLE001 - not up yet
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.5)

    def _status(self, key: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def rss(self) -> int:
        return self._status("VmRSS")

    def reset_peak(self) -> None:
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def peak(self) -> int:
        return self._status("VmHWM")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _send(server: Server, case: Case) -> tuple[str, str]:
    if case.kind == "streams":
        return asyncio.run(_streams(server.target, case.request()))
    with SegpressClient(server.target, timeout_s=600, max_message_bytes=512 * MiB) as c:
        try:
            c._call(c._stub.Compress, case.request(), 600)
            return "OK", ""
        except SegpressError as e:
            return e.code.name, e.details


async def _streams(target: str, n: int) -> tuple[str, str]:
    """Opens n streams that send nothing; the answer is the first refusal
    (or OK when every stream stayed open for a second)."""
    async with AsyncSegpressClient(target, timeout_s=600) as c:
        async def idle():
            await asyncio.sleep(3600)
            yield None

        async def one():
            async for _ in c.compress_stream(idle()):
                pass

        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        done, _ = await asyncio.wait(tasks, timeout=1.0, return_when=asyncio.FIRST_EXCEPTION)
        result = ("OK", "")
        for t in done:
            if t.exception() is not None:
                e = t.exception()
                result = (getattr(e, "code", grpc.StatusCode.UNKNOWN).name, getattr(e, "details", str(e)))
                break
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return result


def run_case(server: Server, case: Case, repeats: int) -> dict:
    times, peaks, kept = [], [], []
    code = message = ""
    for _ in range(repeats):
        before = server.rss()
        server.reset_peak()
        t0 = time.perf_counter()
        code, message = _send(server, case)
        times.append(time.perf_counter() - t0)
        time.sleep(0.2)
        peaks.append(max(server.peak() - before, 0))
        kept.append(server.rss() - before)
    return {"name": case.name, "limit": case.limit, "enforced_by": case.enforced_by,
            "input": case.input, "code": code, "message": message[:160],
            "seconds": round(statistics.median(times), 4),
            "peak_rss_mb": round(statistics.median(peaks) / MiB, 1),
            "kept_rss_mb": round(statistics.median(kept) / MiB, 1)}


def hangul(n_bytes: int, tag: int) -> str:
    """About `n_bytes` of Hangul without spaces (3 bytes a character), the
    legal request that cost most memory in issue 22; every 64 characters
    carry `tag`, so texts with different tags share no segment."""
    block = "\ub300\ud55c\ubbfc\uad6d\uc758\uc218\ub3c4\ub294\uc11c\uc6b8" * 6  # 60 chars
    piece = f"{tag:04d}" + block  # 64 characters, 184 bytes
    return piece * (n_bytes // 184)


def memory(n: int, distinct: int, n_bytes: int, settings: list[tuple[str, dict]]) -> list[dict]:
    """RSS of a server before and after `n` requests of `n_bytes` of Hangul
    (`distinct` different texts in turn: the first round cold, then cached),
    for each (name, server settings) in `settings`."""
    texts = [hangul(n_bytes, t) for t in range(distinct)]
    out = []
    for name, env in settings:
        server = Server(env)
        try:
            time.sleep(1.0)
            before = server.rss()
            server.reset_peak()
            t0 = time.perf_counter()
            codes = {}
            for i in range(n):
                req = SegpressClient.request([texts[i % distinct]], rate=0.5)
                with SegpressClient(server.target, timeout_s=1800,
                                    max_message_bytes=64 * MiB) as c:
                    try:
                        c._call(c._stub.Compress, req, 1800)
                        codes["OK"] = codes.get("OK", 0) + 1
                    except SegpressError as e:
                        codes[e.code.name] = codes.get(e.code.name, 0) + 1
            seconds = time.perf_counter() - t0
            time.sleep(1.0)
            out.append({"settings": name, "requests": n, "distinct": distinct,
                        "bytes": len(texts[0].encode()), "codes": codes,
                        "seconds": round(seconds, 1), "rss_before_mb": round(before / MiB),
                        "peak_mb": round(server.peak() / MiB), "rss_after_mb": round(server.rss() / MiB)})
        finally:
            server.close()
        r = out[-1]
        print(f"{name}: {n} requests of {r['bytes']} bytes ({distinct} texts): {r['codes']}, "
              f"{r['seconds']} s; RSS {r['rss_before_mb']} -> {r['rss_after_mb']} MB "
              f"({r['rss_after_mb'] - r['rss_before_mb']:+d}), peak {r['peak_mb']} MB", file=sys.stderr)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service.benchmarks.limits", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory", type=int, metavar="N",
                    help="instead of the limits: RSS before and after N max-size requests, "
                         "with the memory settings on (the defaults) and off")
    ap.add_argument("--distinct", type=int, default=4, help="--memory: different texts")
    ap.add_argument("--bytes", type=int, default=8 * MiB - 1024, help="--memory: request size")
    ap.add_argument("--settings", default="on,off", help="--memory: on (trim, 2 arenas: the "
                    "defaults), off (neither), or both")
    args = ap.parse_args(argv)
    if not os.environ.get("SEGPRESS_LLMLINGUA2_MODEL"):
        from compressors.models import ensure_default_llmlingua2

        os.environ["SEGPRESS_LLMLINGUA2_MODEL"] = str(ensure_default_llmlingua2(Config().models_dir))
    if args.memory:
        settings = {"on": ("trim, 2 arenas (default)", {}),
                    "off": ("no trim, glibc arenas", {"SEGPRESS_MALLOC_TRIM": "false",
                                                      "SEGPRESS_MALLOC_ARENA_MAX": "0"})}
        settings = [settings[name] for name in args.settings.split(",")]
        results = memory(args.memory, args.distinct, args.bytes, settings)
        if args.json:
            print(json.dumps(results, indent=2))
        return 0
    chosen = [c for c in cases() if not args.only or c.name in args.only]
    results = []
    by_env: dict[str, list[Case]] = {}
    for c in chosen:
        by_env.setdefault(json.dumps(c.env, sort_keys=True), []).append(c)
    for env, group in by_env.items():
        server = Server(json.loads(env))
        try:
            named = {c.name: c for c in cases(server.info)}
            for c in group:
                results.append(run_case(server, named[c.name], args.repeats))
                if not args.json:
                    r = results[-1]
                    print(f"{r['name']}: {r['code']} in {r['seconds']:.3f} s, peak RSS "
                          f"+{r['peak_rss_mb']} MB, kept +{r['kept_rss_mb']} MB", file=sys.stderr)
        finally:
            server.close()
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("| limit | enforced by | input 10x over | answer | time | peak RSS | RSS kept |")
        print("| --- | --- | --- | --- | ---: | ---: | ---: |")
        for r in results:
            print(f"| `{r['limit']}` | {r['enforced_by']} | {r['input']} | {r['code']} | "
                  f"{r['seconds'] * 1000:.0f} ms | +{r['peak_rss_mb']:.0f} MB | "
                  f"{r['kept_rss_mb']:+.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

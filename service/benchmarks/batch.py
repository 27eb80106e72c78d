"""Throughput of `segpress batch`, locally and on Ray, on the same input.

    .venv/bin/python -m service.benchmarks.batch [--docs 600] [--ray-actors 2] [segpress batch flags]

Writes `--docs` distinct chunks (about 280 tokens each, one segment, built
from the bundled sample) to a temporary JSONL file, then runs
`segpress batch --json` on it three times, in this order: in-process with
torch's default threads ("local"), in-process with one torch thread
("local-1t"), and --ray with a local Ray instance (one thread per actor);
each run in a fresh namespace, so every run computes every segment. Prints
one line per run and the summaries as JSON. Extra arguments (for example
--redis-url URL) go to every run. Not part of CI.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from ..config import SAMPLE


def chunks(n: int) -> list[dict]:
    """`n` distinct chunks of three consecutive sample paragraphs."""
    paras = [p for p in SAMPLE.read_text().split("\n\n") if p.strip()]
    return [{"id": f"chunk-{i}",
             "text": f"Chunk {i}. " + "\n\n".join(paras[(i + k) % len(paras)] for k in range(3))}
            for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=600)
    ap.add_argument("--ray-actors", default="2")
    args, extra = ap.parse_known_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="segpress-batch-bench-") as tmp:
        data = Path(tmp) / "chunks.jsonl"
        data.write_text("".join(json.dumps(c) + "\n" for c in chunks(args.docs)))
        for mode, flags in (("local", []), ("local-1t", ["--torch-threads", "1"]),
                            ("ray", ["--ray", "--ray-actors", args.ray_actors])):
            cmd = [sys.executable, "-m", "service.cli", "batch", str(data), f"{tmp}/out-{mode}",
                   "--namespace", f"bench-{uuid.uuid4().hex[:8]}", "--json", *flags, *extra]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode:
                print(f"{mode} run failed (exit {run.returncode}):\n{run.stderr}", file=sys.stderr)
                return 1
            s = results[mode] = json.loads(run.stdout)
            print(f"{mode:8}  {s['rows']} rows, {s['original_tokens']} tokens: "
                  f"{s['rows_per_s']:.1f} rows/s, {s['tokens_per_s']:.0f} tokens/s "
                  f"({s['seconds']:.1f}s; {s['total_seconds']:.1f}s with start-up)")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

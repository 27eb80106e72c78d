"""What complm's refine_steps costs: the same segments compressed with the
encoder alone and refined, side by side in one process (no cache).

    python -m service.benchmarks.refine                     # 10 steps, 64 dev segments, 2 threads
    python -m service.benchmarks.refine --steps 5,10 --segments 128 --json

The segments are the first `--segments` of the dev essays, cut by complm's
segmenter; every setting compresses all of them in one encode call (the
server's batches, --batch-size x 4 segments), `--repeats` times, and the
median is reported with its ratio to the encoder alone. docs/soft-tokens.md
quotes its output.
"""

import argparse
import json
import statistics
import time

import torch

from ..config import Config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", default="10", help="comma list of refine_steps to time")
    p.add_argument("--segments", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from compressors import models
    from compressors.complm import CompLLM
    from compressors.training import corpus

    config = Config()
    steps = [int(s) for s in args.steps.split(",") if s]
    comp = CompLLM(models.ensure_smollm2(config.models_dir), dtype=config.model_dtype,
                   batch_size=config.batch_size * 4, max_refine_steps=max(steps))
    texts = []
    for _, essay in sorted(corpus.split(config.cache_dir)["dev"].items()):
        texts += [s.text for s in comp.segment(essay)]
        if len(texts) >= args.segments:
            break
    texts = texts[: args.segments]
    comp.variant(comp.Params(refine_steps=1)).encode(texts[:1])  # loads the plain decoder once

    def timed(c) -> float:
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            c.encode(texts)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    base = timed(comp)
    rows = [{"refine_steps": 0, "seconds": base, "per_segment_s": base / len(texts), "ratio": 1.0}]
    for n in steps:
        s = timed(comp.variant(comp.Params(refine_steps=n)))
        rows.append({"refine_steps": n, "seconds": s, "per_segment_s": s / len(texts), "ratio": s / base})
    if args.json:
        print(json.dumps({"segments": len(texts), "dtype": comp.dtype, "threads": args.threads, "rows": rows}))
        return 0
    print(f"{len(texts)} dev segments, complm in {comp.dtype}, {args.threads} threads")
    print("| refine_steps | seconds | per segment | vs the encoder alone |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['refine_steps']} | {r['seconds']:.2f} | {r['per_segment_s'] * 1000:.0f} ms | {r['ratio']:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

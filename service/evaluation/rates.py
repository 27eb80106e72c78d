"""The achieved rate against the requested one, from 20 to 100k tokens.

    python -m service.evaluation.rates [--sizes 20,100,1000,10000,100000] [--rates 0.2,0.33,0.5]

Inputs are the first N tokens (whole words) of the dev split's essays joined
(never the reserved Debian text; about 20k tokens, repeated for longer
inputs), sent as one context, and, for the 1k and
10k inputs, also cut into contexts of about 100 and 10 tokens (retrieved
chunks). Each is compressed in process by llmlingua2 (the default model,
torch float32) at every rate, with word and sentence granularity; the
achieved rate is the response's: kept tokens / input tokens, in the
classifier's tokens. Prints one row per (input, granularity, rate) with the
relative error |achieved - requested| / requested, and the largest per
granularity.
"""

import argparse
import json
import sys

from compressors import models
from compressors.base import ContextParts
from compressors.llmlingua2 import LLMLingua2, Params
from compressors.training import corpus
from compressors.training.cards import command
from service.config import Config


def first_tokens(words: list[str], comp: LLMLingua2, n: int) -> str:
    """The shortest prefix of `words` with at least `n` classifier tokens."""
    lo, hi = 1, len(words)
    while lo < hi:  # binary search on the word count
        mid = (lo + hi) // 2
        if len(comp.tokenizer(" ".join(words[:mid]), add_special_tokens=False)["input_ids"]) >= n:
            hi = mid
        else:
            lo = mid + 1
    return " ".join(words[:lo])


def chunks(text: str, comp: LLMLingua2, tokens: int) -> list[str]:
    """`text` cut at word boundaries into pieces of about `tokens` tokens."""
    words, out = text.split(" "), []
    while words:
        piece = first_tokens(words, comp, tokens)
        out.append(piece)
        words = words[len(piece.split(" ")):]
    return out


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20,100,1000,10000,100000")
    ap.add_argument("--rates", default="0.2,0.33,0.5")
    ap.add_argument("--json", default="", help="also write the rows here")
    args = ap.parse_args(argv)
    cfg = Config()
    comp = LLMLingua2(str(models.ensure_default_llmlingua2(cfg.models_dir)))
    docs = corpus.split(cfg.cache_dir)["dev"]
    words = " ".join(docs[name].replace("\n", " ") for name in sorted(docs)).split()
    sizes = [int(s) for s in args.sizes.split(",")]
    words *= 1 + max(sizes) // len(words)  # the dev essays are ~20k tokens: repeated past that
    rates = [float(r) for r in args.rates.split(",")]
    inputs = []
    for n in sizes:
        text = first_tokens(words, comp, n)
        inputs.append((f"{n} tokens, 1 context", [text]))
        if n in (1000, 10000):
            for size in (100, 10):
                inputs.append((f"{n} tokens, contexts of ~{size}", chunks(text, comp, size)))
    rows = []
    for name, contexts in inputs:
        parts = []
        for c in contexts:
            segs = comp.segment(c)
            parts.append(ContextParts(c, segs, comp.encode([s.text for s in segs])))
        for granularity in ("word", "sentence"):
            for rate in rates:
                out = comp.render(parts, Params(rate=rate, granularity=granularity))
                total = sum(r.original_tokens for r in out)
                kept = sum(r.compressed_tokens for r in out)
                achieved = kept / total
                rows.append({"input": name, "tokens": total, "contexts": len(contexts),
                             "granularity": granularity, "rate": rate, "achieved": achieved,
                             "error": abs(achieved - rate) / rate})
                print(f"| {name} | {total} | {granularity} | {rate:.2f} | {achieved:.3f} | "
                      f"{100 * rows[-1]['error']:.1f}% |", flush=True)
    for granularity in ("word", "sentence"):
        worst = max((r for r in rows if r["granularity"] == granularity), key=lambda r: r["error"])
        print(f"{granularity}: largest error {100 * worst['error']:.1f}% ({worst['input']}, "
              f"rate {worst['rate']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command("python -m service.evaluation.rates", argv),
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])

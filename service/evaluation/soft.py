"""`segpress eval complm|arc`: what a soft-token compressor's rows are worth
to the decoder.

The decoder is a fresh, unmodified SmolLM2-135M-Instruct (the reader); the
rows ("CEs" below, whichever compressor made them) come from the compressor
exactly as the server makes them (segment -> encode -> render, so arc's rows
end with its <Cont> row); --weights evaluates a weights file other than the
shipped one. All text is from one held-out split, --split dev (to tune on,
the default) or test (to report, once) (--corpus: the essays of
compressors/training/corpus.py and/or the prose of prose.py); the
compressors trained on "train" only. The reserved Debian documentation is in
neither.

1. Continuation loss. Each example is `context` tokens of an essay and the
   `continuation` tokens after it. The decoder's mean cross-entropy on the
   continuation is measured after [eot] and:
       none        nothing
       full        the context's tokens
       ce          the context's CEs
       ce_other    the CEs of a context from a different essay (control)
       truncated   the last m context tokens, m = the number of CEs (the
                   same number of positions as the CEs)
   gap closed = (loss_none - loss_ce) / (loss_none - loss_full). 95%
   confidence intervals: percentile bootstrap over examples (paired: every
   resample recomputes every condition on the same examples), fixed seed.
2. Needle QA, the measure that matters. The evaluation harness's needle task
   (a fact sentence inside an essay excerpt of --needle-words words, held
   to --needle-tokens reader tokens, 150-400 by default; a question about
   the fact) answered greedily by the reader with its fixed prompt, the
   context given as text (row key full, condition "text"), as its CEs (ce,
   "soft"; segpress.soft_tokens puts them where the text would be), as the
   CEs of another question's context from another essay (control; that
   context does not hold this answer), or not at all (none). Accuracy: the
   answer string is in the reply (reader.contains). Each condition's
   accuracy and soft / text with paired 95% bootstrap CIs over questions
   (`needle.conditions`, `needle.soft_over_text`; `needle.accuracy` keeps
   full / ce / none as before). --qa-only runs this part alone.
3. Prefill. Median time of one decoder forward pass (the prefill before the
   first generated token) over [eot] + N context tokens against [eot] + the
   CEs of those N tokens, for N in --prefill; and the time to make the CEs
   from nothing (a cache miss; a hit costs only the cache lookup).
4. Reconstruction (weights whose training also taught a <Rec> row): the
   decoder reads [eot, a held-out segment's rows, <Rec>] and generates
   greedily as many tokens as the segment has; token accuracy is the share
   of positions where it wrote the segment's token, exact match the share of
   segments it wrote entirely.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from compressors.refine import LR
from compressors.training.cards import command, portable

from .soft_decoding import prefill_times, reconstruction, rows_of
from .soft_qa import needle_qa, token_bounds


# -- statistics ------------------------------------------------------------------


def bootstrap(losses: dict[str, np.ndarray], n: int, seed: int) -> dict:
    """Means, paired differences and the gap closed, each with a 95% CI."""
    def stats(idx):
        m = {k: float(v[idx].mean()) for k, v in losses.items()}
        return {
            **{f"loss_{k}": v for k, v in m.items()},
            "none_minus_ce": m["none"] - m["ce"],
            "ce_other_minus_ce": m["ce_other"] - m["ce"],
            "truncated_minus_ce": m["truncated"] - m["ce"],
            "gap_closed": (m["none"] - m["ce"]) / (m["none"] - m["full"]),
            "gap_closed_truncated": (m["none"] - m["truncated"]) / (m["none"] - m["full"]),
            "gap_closed_ce_other": (m["none"] - m["ce_other"]) / (m["none"] - m["full"]),
        }
    size = len(next(iter(losses.values())))
    point = stats(np.arange(size))
    rng = np.random.default_rng(seed)
    draws = [stats(rng.integers(0, size, size)) for _ in range(n)]
    return {k: {"value": v, "ci95": [float(np.percentile([d[k] for d in draws], 2.5)),
                                     float(np.percentile([d[k] for d in draws], 97.5))]}
            for k, v in point.items()}


# -- 1. continuation loss -----------------------------------------------------------


def continuation_losses(decoder, comp, params, examples: list[dict], bos_id: int):
    """Per-condition losses [examples], and the CE rows of each example."""
    import torch
    import torch.nn.functional as F

    E = decoder.get_input_embeddings()
    dtype = E.weight.dtype

    def ces(text):
        return torch.from_numpy(rows_of(comp, text, params).tensor).to(dtype)

    def loss(prefix: torch.Tensor, cont: list[int]) -> float:
        x = torch.cat([E(torch.tensor([bos_id])), prefix.to(dtype), E(torch.tensor(cont))])[None]
        logits = decoder(inputs_embeds=x).logits[0, -len(cont) - 1 : -1].float()
        return F.cross_entropy(logits, torch.tensor(cont)).item()

    all_ces = [ces(ex["context"]) for ex in examples]
    # The control: CEs of the next example from another essay.
    other = [next(j for j in list(range(i + 1, len(examples))) + list(range(i))
                  if examples[j]["doc"] != ex["doc"]) for i, ex in enumerate(examples)]
    out = {k: [] for k in ("none", "full", "ce", "ce_other", "truncated")}
    with torch.inference_mode():
        empty = E.weight.new_zeros((0, E.embedding_dim))
        for ex, ce, j in zip(examples, all_ces, other):
            cont, ctx = ex["continuation"], ex["context_ids"]
            out["none"].append(loss(empty, cont))
            out["full"].append(loss(E(torch.tensor(ctx)), cont))
            out["ce"].append(loss(ce, cont))
            out["ce_other"].append(loss(all_ces[j], cont))
            out["truncated"].append(loss(E(torch.tensor(ctx[len(ctx) - len(ce):])), cont))
    return {k: np.asarray(v) for k, v in out.items()}, [len(c) for c in all_ces]

# -- the command --------------------------------------------------------------------


def soft_compressor(name: str, decoder_dir, config, args):
    """(compressor, its Params for this run, weights path) for `name`: the
    weights of --weights, else those the configuration names (SEGPRESS_WEIGHTS),
    else the shipped ones; with --refine-steps, the variant that refines its
    rows that many steps (pulled toward the encoder's rows by --refine-pull);
    with --verbatim-names, the variant that passes names verbatim."""
    from compressors.registry import weights_path

    weights = args.weights_file or weights_path(name, config)
    steps = args.refine_steps
    if name == "arc":
        from compressors.arc import Arc

        comp = Arc(decoder_dir, weights, dtype=config.model_dtype, max_refine_steps=steps)
        params = comp.Params(pooling_factor=args.pooling_factor or comp.Params().pooling_factor,
                             refine_steps=steps, verbatim_names=args.verbatim_names)
    else:
        from compressors.complm import CompLLM

        comp = CompLLM(decoder_dir, weights, dtype=config.model_dtype, max_refine_steps=steps)
        params = comp.Params(refine_steps=steps, verbatim_names=args.verbatim_names)
    if args.refine_pull is not None:
        comp.refine_pull = args.refine_pull
    params.check()
    comp.check_params(params)
    return comp.variant(params), params, weights



def main(args, config) -> int:
    import torch

    from compressors import models
    from compressors.training import soft

    from .reader import Reader

    def progress(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.qa_only:
        args.examples, args.prefill, args.reconstructions = 0, "", 0
    if args.needles is None:
        args.needles = 100 if args.qa_only else 20
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    decoder_dir = models.ensure_smollm2(config.models_dir)
    name = args.eval_target
    comp, params, weights = soft_compressor(name, decoder_dir, config, args)
    reader = Reader(str(decoder_dir), dtype=config.model_dtype)  # the frozen decoder, untouched
    tok = reader.tokenizer
    bos_id = tok.convert_tokens_to_ids("<|endoftext|>")
    sources = args.corpus.split(",")
    docs = soft.documents(config.cache_dir, args.split, sources)
    t0 = time.time()

    result = {
        "command": command("segpress", sys.argv[1:]),
        "weights": portable(str(weights)), "weights_fingerprint": comp.fingerprint,
        "decoder": {"id": comp.decoder_id, "fingerprint": comp.decoder_fingerprint,
                    "dtype": reader.dtype},
        "compressor": name, "params": {k: v for k, v in vars(params).items()},
        "refine": {"lr": LR, "pull": comp.refine_pull} if params.refine_steps else None,
        "data": {"sources": soft.provenance(sources), "split": args.split},
        "torch_threads": torch.get_num_threads(),
    }
    exs = []
    if args.examples:
        exs = soft.examples(docs, tok, args.examples, args.seed, args.context_tokens, args.context_tokens,
                            args.continuation, comp.max_segment_tokens, uniform_docs=True, stream="complm")
        losses, rows = continuation_losses(reader.model, comp, params, exs, bos_id)
        progress(f"continuation losses: {', '.join(f'{k} {v.mean():.3f}' for k, v in losses.items())}")
        result.update({
            "setup": {"examples": len(exs), "context_tokens": args.context_tokens,
                      "continuation": args.continuation, "bootstrap": args.bootstrap, "seed": args.seed,
                      "mean_ce_rows": float(np.mean(rows))},
            "continuation": bootstrap(losses, args.bootstrap, args.seed),
            "per_example": {k: v.tolist() for k, v in losses.items()},
        })
    if args.needles:
        result["needle"] = needle_qa(reader, comp, params, docs, args.needles, args.needle_words,
                                     args.seed, progress, tokens=token_bounds(args.needle_tokens),
                                     new_tokens=args.qa_new_tokens, batch=args.qa_batch,
                                     bootstrap_n=args.bootstrap)
    lengths = [int(n) for n in args.prefill.split(",") if n]
    if lengths:
        result["prefill"] = prefill_times(reader.model, comp, params, tok, docs, lengths, args.repeats,
                                          bos_id, progress)
    if args.reconstructions and exs:
        result["reconstruction"] = reconstruction(reader.model, comp, params, exs, args.reconstructions,
                                                  bos_id, progress)
    result["seconds"] = round(time.time() - t0, 1)

    out = Path(args.out or Path(config.cache_dir) / "eval" / f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(summary(result))
    print(f"wrote {out}")
    return 0


def summary(result: dict) -> str:
    """One line: QA per condition and soft / text, the loss gap and
    reconstruction beside them (each where measured)."""
    def ci(v, fmt="{:.2f}"):
        if v["value"] is None:
            return "n/a"
        return fmt.format(v["value"]) + (f" [{fmt.format(v['ci95'][0])}, {fmt.format(v['ci95'][1])}]"
                                         if v["ci95"] else "")

    p = result["params"]
    factor = f" x{p['pooling_factor']}" if "pooling_factor" in p else ""
    parts = [f"{result['compressor']}{factor} {result['data']['split']}"]
    n = result.get("needle")
    if n and "conditions" in n:
        c = n["conditions"]
        parts.append(f"QA ({n['examples']} q, {n['mean_context_tokens']:.0f} tokens): "
                     + ", ".join(f"{k} {ci(c[k])}" for k in ("text", "soft", "control", "none"))
                     + f"; soft/text {ci(n['soft_over_text'])}")
    elif n:
        a = n["accuracy"]
        parts.append(f"QA ({n['examples']} q): text {a['full']:.2f}, soft {a['ce']:.2f}, none {a['none']:.2f}")
    if "continuation" in result:
        c = result["continuation"]
        parts.append(f"gap closed {ci(c['gap_closed'], '{:.3f}')}, control {ci(c['gap_closed_ce_other'], '{:.3f}')}")
    if "reconstruction" in result:
        r = result["reconstruction"]
        parts.append(f"reconstruction {r['token_accuracy']:.1%} (in order {r['in_order_recall']:.1%})")
    return "summary: " + " | ".join(parts)


def report(result: dict) -> str:
    """Markdown tables of a result."""
    lines = []
    if "continuation" in result:
        c = result["continuation"]
        s = result["setup"]

        def ci(k, fmt="{:.3f}"):
            v = c[k]
            return f"{fmt.format(v['value'])} [{fmt.format(v['ci95'][0])}, {fmt.format(v['ci95'][1])}]"

        lines += [f"Continuation loss (nats/token) of the frozen decoder, {s['examples']} held-out examples "
                  f"({result['data']['split']} split), {s['context_tokens']} context tokens -> "
                  f"{s['mean_ce_rows']:.1f} CEs, {s['continuation']} continuation tokens; 95% bootstrap CIs:", "",
                  "| context given | loss | gap closed |", "| --- | --- | --- |",
                  f"| none | {ci('loss_none')} | 0 |",
                  f"| full text | {ci('loss_full')} | 1 |",
                  f"| CEs | {ci('loss_ce')} | {ci('gap_closed')} |",
                  f"| CEs of another essay | {ci('loss_ce_other')} | {ci('gap_closed_ce_other')} |",
                  f"| last tokens, as many as CEs | {ci('loss_truncated')} | {ci('gap_closed_truncated')} |",
                  "", f"none - CEs: {ci('none_minus_ce')}; other essay's CEs - CEs: {ci('ce_other_minus_ce')}; "
                      f"truncated - CEs: {ci('truncated_minus_ce')}"]
    if "needle" in result:
        n = result["needle"]
        a = n["accuracy"]
        lines += ["", f"Needle QA ({n['examples']} examples, {n['mean_context_tokens']:.0f} context tokens): "
                  f"full text {a['full']:.0%}, CEs {a['ce']:.0%}, no context {a['none']:.0%}"]
        if "conditions" in n:
            def acc(v):
                lo, hi = v["ci95"] or (float("nan"), float("nan"))
                return "n/a" if v["value"] is None else f"{v['value']:.2f} [{lo:.2f}, {hi:.2f}]"

            t = n["context_tokens"]
            lines += ["", f"QA from soft tokens ({n['examples']} questions, {result['data']['split']} split, "
                      f"contexts {t['min']}-{t['max']} reader tokens, mean {n['mean_context_tokens']:.0f} -> "
                      f"{n['mean_soft_rows']:.1f} rows; accuracy, 95% bootstrap CI):", "",
                      "| context given | accuracy |", "| --- | --- |"]
            lines += [f"| {label} | {acc(n['conditions'][k])} |" for k, label in (
                ("text", "text"), ("soft", "its soft tokens"),
                ("control", "another context's soft tokens (control)"), ("none", "none"))]
            lines += [f"| soft / text | {acc(n['soft_over_text'])} |"]
    if "reconstruction" in result:
        r = result["reconstruction"]
        lines += ["", f"Reconstruction ({r['segments']} held-out segments, greedy from their rows and "
                  f"<Rec>): token accuracy {r['token_accuracy']:.1%}, tokens in order "
                  f"{r['in_order_recall']:.1%}, exact match {r['exact_match']:.0%}"]
    if "prefill" in result:
        lines += ["", "| context tokens | CEs | prefill, text (s) | prefill, CEs (s) | speed-up | "
                  "making the CEs (s) | speed-up incl. making them |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in result["prefill"]:
            lines.append(f"| {r['context_tokens']} | {r['ce_rows']} | {r['prefill_full_s']:.2f} | "
                         f"{r['prefill_ce_s']:.2f} | {r['speedup_cached']:.2f}x | {r['compress_s']:.2f} | "
                         f"{r['speedup_uncached']:.2f}x |")
    return "\n".join(lines)

"""`segpress eval complm|arc`: what a soft-token compressor's rows are worth
to the decoder.

The decoder is a fresh, unmodified SmolLM2-135M-Instruct (the reader); the
rows ("CEs" below, whichever compressor made them) come from the compressor
exactly as the server makes them (segment -> encode -> render, so arc's rows
end with its <Cont> row). All text is from the held-out "test" split
(--corpus: the essays of compressors/training/corpus.py and/or the prose of
prose.py); the compressors trained on "train" only.

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
2. Needle QA. The evaluation harness's needle task (a fact sentence inside
   an essay excerpt, a question about it) answered by the reader with its
   fixed prompt, the context given as text, as CEs (segpress.soft_tokens),
   or not at all.
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
import statistics
import sys
import time
from pathlib import Path

import numpy as np


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
        return torch.from_numpy(_render(comp, text, params).tensor).to(dtype)

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


def _render(comp, text: str, params):
    """`text` through the compressor as the server runs it (segment, encode,
    render), with no cache."""
    from compressors.base import ContextParts

    segs = comp.segment(text)
    return comp.render([ContextParts(text, segs, comp.encode([s.text for s in segs]))], params)[0]


def _tensor(comp, text: str, params):
    """The CEs of `text` as the wire Tensor a client gets."""
    from segpress.tensors import from_numpy

    r = _render(comp, text, params)
    t = from_numpy(r.tensor, "float32", np.concatenate([[0], np.cumsum(r.segment_rows)]))
    t.decoder_id = comp.decoder_id
    return t


# -- 2. needle QA -------------------------------------------------------------------


def needle_qa(reader, comp, params, docs: dict[str, str], n: int, words: int, seed: int,
              progress) -> dict:
    from segpress.soft_tokens import generate

    from .reader import PROMPT, contains
    from .tasks import needle

    rows = []
    for ex in needle(docs, n, seed, words=words):
        prompt = PROMPT.replace("{question}", ex.question)
        answers = {
            "full": reader.answer(ex.context, ex.question),
            "ce": generate(_tensor(comp, ex.context, params), reader.model, reader.tokenizer, prompt,
                           max_new_tokens=reader.max_new_tokens),
            "none": reader.answer("", ex.question),
        }
        rows.append({"id": ex.id, "answer": ex.answer, "context_tokens": reader.count(ex.context),
                     **{k: {"text": v, "correct": contains(v, ex.answer)} for k, v in answers.items()}})
        progress(f"needle {len(rows)}/{n}: {ex.answer!r} full={answers['full']!r} ce={answers['ce']!r}")
    acc = {k: sum(r[k]["correct"] for r in rows) / max(len(rows), 1) for k in ("full", "ce", "none")}
    return {"accuracy": acc, "examples": len(rows),
            "mean_context_tokens": statistics.mean(r["context_tokens"] for r in rows) if rows else 0,
            "rows": rows}


# -- 3. prefill -----------------------------------------------------------------------


def prefill_times(decoder, comp, params, tok, docs: dict[str, str], lengths: list[int],
                  repeats: int, bos_id: int, progress) -> list[dict]:
    import torch

    E = decoder.get_input_embeddings()
    ids = []
    for name in sorted(docs):
        ids += tok(docs[name] + "\n\n", add_special_tokens=False)["input_ids"]

    def forward(x):
        with torch.inference_mode():
            h = decoder.model(inputs_embeds=x[None], use_cache=True).last_hidden_state
            decoder.lm_head(h[:, -1])  # the first token's logits

    def timed(fn):
        """Median seconds of `repeats` calls."""
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    rows = []
    for n in lengths:
        if n > len(ids):
            raise SystemExit(f"--prefill {n}: the test essays hold only {len(ids)} tokens")
        text = tok.decode(ids[:n])
        with torch.inference_mode():
            full = torch.cat([E(torch.tensor([bos_id])), E(torch.tensor(ids[:n]))])
            segs = comp.segment(text)
            ce = torch.from_numpy(_render(comp, text, params).tensor)
            soft = torch.cat([E(torch.tensor([bos_id])), ce.to(E.weight.dtype)])
        row = {"context_tokens": n, "ce_rows": len(ce),
               "prefill_full_s": timed(lambda: forward(full)),
               "prefill_ce_s": timed(lambda: forward(soft)),
               "compress_s": timed(lambda: comp.encode([s.text for s in segs]))}
        row["speedup_cached"] = row["prefill_full_s"] / row["prefill_ce_s"]
        row["speedup_uncached"] = row["prefill_full_s"] / (row["prefill_ce_s"] + row["compress_s"])
        rows.append(row)
        progress(f"prefill {json.dumps(row)}")
    return rows


# -- 4. reconstruction ---------------------------------------------------------------


def common_subsequence(a: list[int], b: list[int]) -> int:
    """Length of the longest common subsequence of token lists a and b."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def reconstruction(decoder, comp, params, examples: list[dict], n: int, bos_id: int, progress) -> dict:
    """Greedy regeneration of the first segment of `n` examples from its rows
    (without the <Cont> row) and the <Rec> row. token_accuracy counts tokens
    right at their position (one dropped word shifts the rest);
    in_order_recall counts the segment's tokens the regeneration has in the
    right order (longest common subsequence), whatever their position."""
    import torch

    E = decoder.get_input_embeddings()
    rows = []
    for ex in examples[:n]:
        seg = comp.segment(ex["context"])[0]
        want = comp.tokenizer(seg.text, add_special_tokens=False)["input_ids"]
        soft = torch.from_numpy(np.concatenate([_render(comp, seg.text, params).tensor[:-1], comp.rec_row]))
        with torch.inference_mode():
            x = torch.cat([E(torch.tensor([bos_id])), soft.to(E.weight.dtype)])[None]
            got = decoder.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
                                   max_new_tokens=len(want), min_new_tokens=len(want), do_sample=False,
                                   pad_token_id=bos_id)[0, -len(want):].tolist()
        rows.append({"tokens": len(want), "correct": sum(a == b for a, b in zip(got, want)),
                     "in_order": common_subsequence(got, want), "exact": got == want,
                     "text": comp.tokenizer.decode(got), "want": seg.text})
        progress(f"reconstruction {len(rows)}/{n}: {rows[-1]['correct']}/{len(want)} tokens")
    tokens = max(sum(r["tokens"] for r in rows), 1)
    return {"segments": len(rows),
            "token_accuracy": sum(r["correct"] for r in rows) / tokens,
            "in_order_recall": sum(r["in_order"] for r in rows) / tokens,
            "exact_match": sum(r["exact"] for r in rows) / max(len(rows), 1), "rows": rows}


# -- the command --------------------------------------------------------------------


def soft_compressor(name: str, decoder_dir, config, args):
    """(compressor, its Params for this run, weights path) for `name`."""
    if name == "arc":
        from compressors.arc import Arc
        from compressors.arc_model import DEFAULT_WEIGHTS

        weights = config.arc_weights or DEFAULT_WEIGHTS
        comp = Arc(decoder_dir, weights, dtype=config.model_dtype)
        return comp, comp.Params(pooling_factor=args.pooling_factor or comp.Params().pooling_factor), weights
    from compressors.complm import DEFAULT_WEIGHTS, CompLLM

    weights = config.complm_weights or DEFAULT_WEIGHTS
    comp = CompLLM(decoder_dir, weights, dtype=config.model_dtype)
    return comp, comp.Params(), weights



def main(args, config) -> int:
    import torch

    from compressors import models
    from compressors.training import soft

    from .reader import Reader

    def progress(msg):
        print(msg, file=sys.stderr, flush=True)

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    decoder_dir = models.ensure_smollm2(config.models_dir)
    name = args.eval_target
    comp, params, weights = soft_compressor(name, decoder_dir, config, args)
    reader = Reader(str(decoder_dir), dtype=config.model_dtype)  # the frozen decoder, untouched
    tok = reader.tokenizer
    bos_id = tok.convert_tokens_to_ids("<|endoftext|>")
    sources = args.corpus.split(",")
    test = soft.documents(config.cache_dir, "test", sources)
    t0 = time.time()

    exs = soft.examples(test, tok, args.examples, args.seed, args.context_tokens, args.context_tokens,
                        args.continuation, comp.max_segment_tokens, uniform_docs=True, stream="complm")
    losses, rows = continuation_losses(reader.model, comp, params, exs, bos_id)
    progress(f"continuation losses: {', '.join(f'{k} {v.mean():.3f}' for k, v in losses.items())}")
    result = {
        "command": "segpress " + " ".join(sys.argv[1:]),
        "weights": str(weights), "weights_fingerprint": comp.fingerprint,
        "decoder": {"id": comp.decoder_id, "fingerprint": comp.decoder_fingerprint,
                    "dtype": reader.dtype},
        "compressor": name, "params": {k: v for k, v in vars(params).items()},
        "data": {"sources": soft.provenance(sources), "split": "test"},
        "torch_threads": torch.get_num_threads(),
        "setup": {"examples": len(exs), "context_tokens": args.context_tokens,
                  "continuation": args.continuation, "bootstrap": args.bootstrap, "seed": args.seed,
                  "mean_ce_rows": float(np.mean(rows))},
        "continuation": bootstrap(losses, args.bootstrap, args.seed),
        "per_example": {k: v.tolist() for k, v in losses.items()},
    }
    if args.needles:
        result["needle"] = needle_qa(reader, comp, params, test, args.needles, args.needle_words,
                                     args.seed, progress)
    lengths = [int(n) for n in args.prefill.split(",") if n]
    if lengths:
        result["prefill"] = prefill_times(reader.model, comp, params, tok, test, lengths, args.repeats,
                                          bos_id, progress)
    if args.reconstructions and comp.rec_row is not None:
        result["reconstruction"] = reconstruction(reader.model, comp, params, exs, args.reconstructions,
                                                  bos_id, progress)
    result["seconds"] = round(time.time() - t0, 1)

    out = Path(args.out or Path(config.cache_dir) / "eval" / f"{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"wrote {out}")
    return 0


def report(result: dict) -> str:
    """Markdown tables of a result."""
    c = result["continuation"]
    s = result["setup"]

    def ci(k, fmt="{:.3f}"):
        v = c[k]
        return f"{fmt.format(v['value'])} [{fmt.format(v['ci95'][0])}, {fmt.format(v['ci95'][1])}]"

    lines = [f"Continuation loss (nats/token) of the frozen decoder, {s['examples']} held-out examples, "
             f"{s['context_tokens']} context tokens -> {s['mean_ce_rows']:.1f} CEs, {s['continuation']} "
             "continuation tokens; 95% bootstrap CIs:", "",
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

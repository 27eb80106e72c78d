"""Needle QA from a soft-token compressor's rows, for `segpress eval
complm|arc` (service/evaluation/soft.py explains the measure): the reader
answers from the text, from the rows, from another context's rows (control)
and from nothing."""

import statistics
import time

import numpy as np

from .soft_decoding import rows_of


def wire_tensor(comp, text: str, params):
    """The CEs of `text` as the wire Tensor a client gets."""
    from segpress.tensors import from_numpy

    r = rows_of(comp, text, params)
    t = from_numpy(r.tensor, "float32", np.concatenate([[0], np.cumsum(r.segment_rows)]))
    t.decoder_id = comp.decoder_id
    return t


# -- 2. needle QA -------------------------------------------------------------------


QA_CONDITIONS = {"text": "full", "soft": "ce", "control": "control", "none": "none"}
"""The QA conditions' names in `needle.conditions` -> their keys in each row
(full, ce and none are also `needle.accuracy`'s keys, as before)."""


def qa_bootstrap(correct: dict[str, np.ndarray], n: int, seed: int) -> dict:
    """Accuracy per condition (row keys full/ce/control/none, named as in
    QA_CONDITIONS) and soft / text, each with a paired 95% percentile
    bootstrap CI over questions. soft / text is null where text scores 0
    (resamples where it does are left out of the interval)."""
    def stats(idx):
        acc = {name: float(correct[key][idx].mean()) for name, key in QA_CONDITIONS.items()}
        acc["soft_over_text"] = acc["soft"] / acc["text"] if acc["text"] else float("nan")
        return acc

    size = len(correct["full"])
    point = stats(np.arange(size))
    rng = np.random.default_rng(seed)
    draws = [stats(rng.integers(0, size, size)) for _ in range(n)] if size else []
    out = {}
    for k, v in point.items():
        vals = np.array([d[k] for d in draws])
        vals = vals[~np.isnan(vals)]
        ci = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) else None
        out[k] = {"value": None if np.isnan(v) else v, "ci95": ci}
    return out


def control_index(examples, i: int) -> int:
    """The example whose soft tokens are example i's control: the next one
    (cyclically) from another document whose context does not hold i's
    answer."""
    from .reader import contains

    ex, n = examples[i], len(examples)
    for j in [(i + k) % n for k in range(1, n)]:
        if examples[j].meta["doc"] != ex.meta["doc"] and not contains(examples[j].context, ex.answer):
            return j
    raise SystemExit("needle QA: the control needs contexts from at least two documents")


def greedy_answers(reader, embeds: list, new_tokens: int, batch: int) -> list[str]:
    """The reader's greedy answers (at most `new_tokens` tokens, decoded
    without special tokens) to prompts given as [1, length, hidden] input
    embeddings, `batch` at a time, left-padded under the attention mask
    (about 3x faster at 8 on 2 cores). In bfloat16 a batch's shape moves
    the numbers a little, so a few answers differ from one-at-a-time ones
    (16 dev questions, text and CEs: 27 of 32 answers identical, no score
    changed); batch 1 computes what Reader.answer and soft_tokens.generate
    do."""
    import torch

    out = []
    for k in range(0, len(embeds), batch):
        part = embeds[k:k + batch]
        width = max(e.shape[1] for e in part)
        x = part[0].new_zeros((len(part), width, part[0].shape[2]))
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for i, e in enumerate(part):
            x[i, width - e.shape[1]:], mask[i, width - e.shape[1]:] = e[0], 1
        with torch.inference_mode():
            got = reader.model.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=new_tokens,
                                        do_sample=False, pad_token_id=reader.tokenizer.eos_token_id)
        # With only inputs_embeds, generate returns the new tokens alone.
        out += [reader.tokenizer.decode(g, skip_special_tokens=True).strip() for g in got]
    return out


def needle_qa(reader, comp, params, docs: dict[str, str], n: int, words: int, seed: int,
              progress, *, tokens: tuple[int, int] | None = None, new_tokens: int = 16,
              batch: int = 1, bootstrap_n: int = 2000) -> dict:
    """Each question answered by the frozen reader, greedy, at most
    `new_tokens` tokens, with its fixed prompt and the context given as
    text (full), as its soft tokens (ce), as the soft tokens of another
    example's context (control: another document, without this answer), or
    not at all (none); `batch` prompts at a time (greedy_answers). With
    `tokens` = (lo, hi), every context is lo..hi reader tokens (tasks.needle
    draws again until it is)."""
    import torch
    from segpress.soft_tokens import inputs_embeds

    from .reader import PROMPT, contains
    from .tasks import needle

    t0 = time.time()
    fits = (lambda text: tokens[0] <= reader.count(text) <= tokens[1]) if tokens else None
    try:
        exs = needle(docs, n, seed, words=words, fits=fits)
    except ValueError as e:
        raise SystemExit(f"{e}: --needle-tokens {tokens[0]},{tokens[1]} does not suit --needle-words "
                         f"{words}; change one, or --needle-tokens '' for no bounds") from e
    t1 = time.time()
    soft = [wire_tensor(comp, ex.context, params) for ex in exs]  # each context compressed once
    compress_s = time.time() - t1
    other = [control_index(exs, i) for i in range(len(exs))] if len(exs) > 1 else [None] * len(exs)
    progress(f"needle: {len(exs)} contexts compressed ({time.time() - t0:.0f} s)")
    E = reader.model.get_input_embeddings()

    def text(context: str, question: str):
        ids = reader.tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPT.format(context=context, question=question)}],
            add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            return E(ids)

    def rows(i: int, ex):
        return inputs_embeds(soft[i], reader.model, reader.tokenizer, PROMPT.replace("{question}", ex.question))

    prompts = {"full": [text(ex.context, ex.question) for ex in exs],
               "ce": [rows(i, ex) for i, ex in enumerate(exs)],
               "control": [rows(j, ex) for j, ex in zip(other, exs) if j is not None],
               "none": [text("", ex.question) for ex in exs]}
    answers = {}
    for k, embeds in prompts.items():
        answers[k] = greedy_answers(reader, embeds, new_tokens, batch)
        progress(f"needle: {k} answered ({time.time() - t0:.0f} s)")
    out = []
    for i, ex in enumerate(exs):
        j = other[i]
        got = {k: v[i] for k, v in answers.items() if v}
        out.append({"id": ex.id, "answer": ex.answer, "context_tokens": reader.count(ex.context),
                    "soft_rows": int(soft[i].shape[0]), "kind": ex.meta["kind"],
                    "depth": ex.meta["depth"], "doc": ex.meta["doc"],
                    "control_from": exs[j].id if j is not None else None,
                    **{k: {"text": v, "correct": contains(v, ex.answer)} for k, v in got.items()}})
        progress(f"needle {i + 1}/{n}: {ex.answer!r} full={got['full']!r} ce={got['ce']!r} "
                 f"control={got.get('control')!r}")
    acc = {k: sum(r[k]["correct"] for r in out) / max(len(out), 1) for k in ("full", "ce", "none")}
    result = {"accuracy": acc, "examples": len(out),
              "mean_context_tokens": statistics.mean(r["context_tokens"] for r in out) if out else 0,
              "rows": out}
    if len(out) > 1:
        ctx = [r["context_tokens"] for r in out]
        result.update({
            "conditions": qa_bootstrap({k: np.array([r[k]["correct"] for r in out], dtype=float)
                                        for k in QA_CONDITIONS.values()}, bootstrap_n, seed),
            "context_tokens": {"min": min(ctx), "max": max(ctx), "bounds": list(tokens) if tokens else None},
            "mean_soft_rows": float(np.mean([r["soft_rows"] for r in out])),
            "words": words, "new_tokens": new_tokens, "batch": batch, "seconds": round(time.time() - t0, 1),
            # compressing the contexts, one after another, as the server would (no cache)
            "compress": {"seconds": round(compress_s, 2), "segments": sum(len(t.segment_offsets) - 1 for t in soft)}})
        result["soft_over_text"] = result["conditions"].pop("soft_over_text")
    return result


def token_bounds(text: str) -> tuple[int, int] | None:
    """--needle-tokens "MIN,MAX" -> (MIN, MAX); "" or "0,0" -> None (no bounds)."""
    try:
        bounds = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        bounds = [-1]
    if not bounds or bounds == [0, 0]:
        return None
    if len(bounds) != 2 or not 0 <= bounds[0] <= bounds[1]:
        raise SystemExit(f"--needle-tokens {text!r}: MIN,MAX reader tokens, or '' for no bounds")
    return bounds[0], bounds[1]

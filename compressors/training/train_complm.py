"""`segpress train complm`: teaches the LoRA + head to write concept embeddings.

The decoder (SmolLM2-135M-Instruct) is both the base of the compressor and
the frozen reader. One training example is a stretch of a training essay
(compressors/training/corpus.py, split "train"): a context of `ctx_min..ctx_max`
tokens and the `continuation` tokens after it.

    teacher = decoder([eot] + context tokens + continuation)       no grad
    student = decoder([eot] + CEs(context segments) + continuation)
    loss    = KL(teacher || student) over the next-token distributions at
              the continuation positions, mean over positions

The context is cut into segments by the same segmenter the server uses, so
the compressor trains on the segments it will see. Gradients flow through
the frozen decoder into the CEs, and from there into the head and the LoRA.
Everything is seeded; the decoder passes run in bfloat16 autocast (about
twice as fast on CPUs with bf16 instructions), the trained tensors in float32.
The result (float16) goes to compressors/weights/complm-smollm2-135m.safetensors
with a JSON card beside it: command, data, timings, loss history.
"""

import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import models
from ..complm import DEFAULT_WEIGHTS
from ..complm_model import CompLLMConfig, CompLLMModel, load_model
from . import corpus, soft

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 360
    batch_size: int = 4  # examples per step
    lr: float = 1e-3
    warmup: int = 20
    ctx_min: int = 40  # context tokens of an example
    ctx_max: int = 120
    continuation: int = 16  # tokens the loss is on
    bf16: bool = True  # decoder passes in bfloat16 autocast
    rank: int = 8
    dev_examples: int = 24  # held-out examples (split "dev") scored before and after


def continuation_logits(decoder, embeds: list[torch.Tensor], n_targets: int) -> torch.Tensor:
    """Logits [B, n_targets, vocab] predicting the last `n_targets` inputs of
    each sequence of input embeddings [len_i, hidden] (right-padded batch)."""
    width = max(len(e) for e in embeds)
    hidden = embeds[0].shape[-1]
    x = embeds[0].new_zeros((len(embeds), width, hidden))
    mask = torch.zeros((len(embeds), width), dtype=torch.long)
    for i, e in enumerate(embeds):
        x[i, : len(e)] = e
        mask[i, : len(e)] = 1
    h = decoder.model(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
    picks = torch.stack([h[i, len(e) - n_targets - 1 : len(e) - 1] for i, e in enumerate(embeds)])
    return decoder.lm_head(picks).float()


def kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student), mean over positions."""
    t = teacher_logits.log_softmax(-1)
    s = student_logits.log_softmax(-1)
    return (t.exp() * (t - s)).sum(-1).mean()


def step_losses(model: CompLLMModel, batch: list[dict], bos_id: int, bf16: bool):
    """(KL, student CE loss, teacher CE loss) for a batch of examples."""
    dec, E = model.decoder, model.embed
    T = len(batch[0]["continuation"])
    bos = torch.tensor([bos_id])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with torch.no_grad():
            teacher = continuation_logits(dec, [E(torch.tensor([bos_id] + ex["context_ids"] + ex["continuation"]))
                                                for ex in batch], T)
        segs = [s for ex in batch for s in ex["segments"]]
        ces = iter(model.concept_embeddings(segs))
        student_in = []
        for ex in batch:
            ce = torch.cat([next(ces) for _ in ex["segments"]])
            student_in.append(torch.cat([E(bos).to(ce.dtype), ce, E(torch.tensor(ex["continuation"])).to(ce.dtype)]))
        student = continuation_logits(dec, student_in, T)
    targets = torch.tensor([ex["continuation"] for ex in batch])
    ce_s = F.cross_entropy(student.flatten(0, 1), targets.flatten())
    ce_t = F.cross_entropy(teacher.flatten(0, 1), targets.flatten())
    return kl(teacher, student), ce_s, ce_t


@torch.no_grad()
def dev_report(model: CompLLMModel, dev: list[dict], bos_id: int, bf16: bool) -> dict:
    """Mean continuation loss with the full context, with the CEs, with none."""
    dec, E = model.decoder, model.embed
    full, soft, none = [], [], []
    for i in range(0, len(dev), 8):
        batch = dev[i : i + 8]
        _, ce_s, ce_t = step_losses(model, batch, bos_id, bf16)
        T = len(batch[0]["continuation"])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = continuation_logits(dec, [E(torch.tensor([bos_id] + ex["continuation"])) for ex in batch], T)
        targets = torch.tensor([ex["continuation"] for ex in batch])
        none.append(F.cross_entropy(logits.flatten(0, 1), targets.flatten()).item() * len(batch))
        full.append(ce_t.item() * len(batch))
        soft.append(ce_s.item() * len(batch))
    n = len(dev)
    r = {"loss_full": sum(full) / n, "loss_ce": sum(soft) / n, "loss_none": sum(none) / n}
    r["gap_closed"] = (r["loss_none"] - r["loss_ce"]) / (r["loss_none"] - r["loss_full"])
    return r


def train(cache_dir: str, cfg: TrainConfig, log_every: int = 10):
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    decoder_dir = models.ensure_smollm2(Path(cache_dir) / "models")
    model, tok = load_model(decoder_dir, None, config=CompLLMConfig(rank=cfg.rank, alpha=2.0 * cfg.rank))
    bos_id = tok.convert_tokens_to_ids("<|endoftext|>")  # documents start after it
    S = model.config.segment_tokens
    split = corpus.split(cache_dir)
    # Uniform over essays, stream "complm": the examples the shipped weights trained on.
    data = soft.examples(split["train"], tok, cfg.steps * cfg.batch_size, cfg.seed, cfg.ctx_min,
                         cfg.ctx_max, cfg.continuation, S, uniform_docs=True, stream="complm")
    dev = soft.examples(split["dev"], tok, cfg.dev_examples, cfg.seed + 1, cfg.ctx_min, cfg.ctx_max,
                        cfg.continuation, S, uniform_docs=True, stream="complm")

    opt = torch.optim.AdamW(model.trainable(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    t0 = time.time()
    record = {"dev_before": dev_report(model, dev, bos_id, cfg.bf16), "history": []}
    log.info("dev before: %s", record["dev_before"])
    model.train()
    window = []
    for step in range(cfg.steps):
        batch = data[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        loss, ce_s, ce_t = step_losses(model, batch, bos_id, cfg.bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable(), 1.0)
        opt.step()
        sched.step()
        window.append((loss.item(), ce_s.item(), ce_t.item()))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            k, s, t = (sum(v) / len(window) for v in zip(*window))
            row = {"step": step + 1, "kl": round(k, 4), "loss_ce": round(s, 4),
                   "loss_full": round(t, 4), "seconds": round(time.time() - t0, 1)}
            record["history"].append(row)
            log.info("%s", row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            window = []
    model.eval()
    record["dev_after"] = dev_report(model, dev, bos_id, cfg.bf16)
    record["seconds"] = round(time.time() - t0, 1)
    record["decoder_fingerprint"] = models.fingerprint(decoder_dir)
    log.info("dev after: %s", record["dev_after"])
    return model, record


def export(model: CompLLMModel, cfg: TrainConfig, record: dict, out: Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out, {"decoder": models.SMOLLM2, "decoder_fingerprint": record["decoder_fingerprint"],
                     "train": json.dumps(asdict(cfg), sort_keys=True)})
    return models.write_card(
        out, asdict(cfg),
        parameters=sum(p.numel() for p in model.trainable()),
        model=json.loads(model.config.to_json()),
        data=corpus.PROVENANCE,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        **record,
    )


def main(cfg: TrainConfig, out: str | None, config) -> int:
    """`segpress train complm` (service/cli.py builds `cfg` from the flags)."""
    model, record = train(config.cache_dir, cfg)
    card = export(model, cfg, record, Path(out) if out else DEFAULT_WEIGHTS)
    print(json.dumps({k: card[k] for k in ("file", "sha256", "bytes", "parameters", "seconds",
                                           "dev_before", "dev_after")}, indent=2))
    return 0

"""`segpress train arc`: teaches the ARC encoder (LoRA, projector, task
embeddings) to write rows the frozen SmolLM2 decoder reads as its context.

Examples come from compressors/training/soft.py: a stretch of a training
document, its segments (the server's segmenter, at most
ArcConfig.segment_tokens tokens each) and a task, reconstruction with
probability `rec_share` (ARC's best mix: 20%), else continuation:

    rows  = concat over segments of ArcModel.rows(segment)[x]   x: this step's factor
    loss  = CE(decoder([eot, rows, <task>, targets]) on targets)
            targets: the next `continuation` tokens (cont) or the context (rec)

The pooling factor alternates between the configured factors step by step,
so one set of weights serves every factor. The decoder passes run in
bfloat16 autocast, the trained tensors in float32. Checkpoints
(`<out>.ckpt`) every `checkpoint_every` steps; a run started again with the
same flags resumes from the last one. The result (float16) and a JSON card
(command, data, config, loss history, dev numbers) go to `--out`.
"""

import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import models
from ..arc_model import DEFAULT_WEIGHTS, ArcConfig, ArcModel, load_model
from . import soft

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 300
    batch_size: int = 8  # examples per step
    lr: float = 1e-3
    warmup: int = 30
    ctx_min: int = 32  # context tokens of an example
    ctx_max: int = 128
    continuation: int = 32  # tokens the continuation loss is on
    rec_share: float = 0.2  # share of reconstruction examples
    layers: int = 6  # encoder depth (the decoder's first blocks)
    rank: int = 64  # LoRA rank
    factors: str = "4,8"  # pooling factors, alternated step by step
    bf16: bool = True  # decoder passes in bfloat16 autocast
    dev_examples: int = 24  # held-out examples (split "dev") scored before and after
    checkpoint_every: int = 25
    corpus: str = "essays,prose"  # text sources (compressors/training/soft.py)
    stop_after: int = 0  # stop at a checkpoint after this step, to resume later; 0: run to the end
    init_from: str = ""  # start from these trained weights (their layers, rank, factors) instead of fresh ones


def batch_loss(model: ArcModel, batch: list[dict], factor: int, bos_id: int, bf16: bool):
    """(mean loss, per-example losses, per-example token accuracy) of a batch."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        segs = [s for ex in batch for s in ex["segments"]]
        rows = iter(model.rows(segs, (factor,))[factor])
        prefixes, targets = [], []
        for ex in batch:
            r = torch.cat([next(rows) for _ in ex["segments"]])  # [rows, D]
            prefixes.append(soft.prefix(model.embed, bos_id, r, model.task(ex["task"])))
            targets.append(ex["context_ids"] if ex["task"] == "rec" else ex["continuation"])
        return soft.decoder_loss(model.decoder, prefixes, targets)


@torch.no_grad()
def dev_report(model: ArcModel, dev: list[dict], factors: tuple[int, ...], bos_id: int, bf16: bool) -> dict:
    """Per factor: the continuation loss with the rows, with the full text and
    with no context, the gap closed, and reconstruction token accuracy."""
    E = model.embed
    cont = [dict(ex, task="cont") for ex in dev]
    rec = [dict(ex, task="rec") for ex in dev]
    full, none = [], []
    for i in range(0, len(dev), 8):
        b = cont[i : i + 8]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            targets = [ex["continuation"] for ex in b]
            _, lf, _ = soft.decoder_loss(model.decoder, [E(torch.tensor([bos_id] + ex["context_ids"]))
                                                         for ex in b], targets)
            _, ln, _ = soft.decoder_loss(model.decoder, [E(torch.tensor([bos_id])) for ex in b], targets)
        full += lf.tolist()
        none += ln.tolist()
    out = {"loss_full": sum(full) / len(dev), "loss_none": sum(none) / len(dev)}
    for f in factors:
        soft_loss, acc = [], []
        for i in range(0, len(dev), 8):
            soft_loss += batch_loss(model, cont[i : i + 8], f, bos_id, bf16)[1].tolist()
            acc += batch_loss(model, rec[i : i + 8], f, bos_id, bf16)[2].tolist()
        loss = sum(soft_loss) / len(dev)
        out[f"x{f}"] = {"loss_rows": loss, "rec_token_accuracy": sum(acc) / len(dev),
                        "gap_closed": (out["loss_none"] - loss) / (out["loss_none"] - out["loss_full"])}
    return out


def train(cache_dir: str, cfg: TrainConfig, out: Path):
    torch.manual_seed(cfg.seed)
    decoder_dir = models.ensure_smollm2(Path(cache_dir) / "models")
    if cfg.init_from:
        model, tok = load_model(decoder_dir, cfg.init_from)
        arc = model.config
    else:
        arc = ArcConfig(layers=cfg.layers, factors=tuple(int(f) for f in cfg.factors.split(",")),
                        rank=cfg.rank, alpha=2.0 * cfg.rank)
        model, tok = load_model(decoder_dir, None, config=arc)
    factors = arc.factors
    bos_id = tok.convert_tokens_to_ids("<|endoftext|>")  # documents start after it
    S = arc.segment_tokens
    sources = cfg.corpus.split(",")
    data = soft.examples(soft.documents(cache_dir, "train", sources), tok, cfg.steps * cfg.batch_size, cfg.seed,
                         cfg.ctx_min, cfg.ctx_max, cfg.continuation, S, cfg.rec_share)
    dev = soft.examples(soft.documents(cache_dir, "dev", sources), tok, cfg.dev_examples, cfg.seed + 1,
                        cfg.ctx_max, cfg.ctx_max, cfg.continuation, S, uniform_docs=True)

    params = model.trained_state()
    opt = torch.optim.AdamW(model.trainable(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    ckpt = soft.Checkpoint(out.with_suffix(".ckpt"))
    resumed = ckpt.load(params, opt, sched)
    if resumed:
        start, record = resumed
        print(f"resumed at step {start} from {ckpt.path}", file=sys.stderr, flush=True)
    else:
        start = 0
        record = {"dev_before": dev_report(model, dev, factors, bos_id, cfg.bf16), "history": [],
                  "seconds_before_resume": 0.0}
        if cfg.init_from:  # the card of the weights this run continues is in git history
            record["init_from_sha256"] = hashlib.sha256(Path(cfg.init_from).read_bytes()).hexdigest()
        log.info("dev before: %s", record["dev_before"])
    progress = soft.Progress(cfg.steps, start)
    t0 = time.time() - record["seconds_before_resume"]
    model.train()
    window = []
    for step in range(start, cfg.steps):
        batch = data[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        factor = factors[step % len(factors)]
        loss, _, acc = batch_loss(model, batch, factor, bos_id, cfg.bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable(), 1.0)
        opt.step()
        sched.step()
        rec = [a.item() for a, ex in zip(acc, batch) if ex["task"] == "rec"]
        window.append((loss.item(), *rec))
        done = step + 1
        at_checkpoint = done % cfg.checkpoint_every == 0 and done < cfg.steps
        if done % 10 == 0 or at_checkpoint or done == cfg.steps:
            losses = [w[0] for w in window]
            accs = [a for w in window for a in w[1:]]
            row = progress.line(done, loss=sum(losses) / len(losses),
                                rec_accuracy=sum(accs) / max(len(accs), 1), lr=sched.get_last_lr()[0])
            record["history"].append(dict(row, seconds=round(time.time() - t0, 1)))
            window = []
        if at_checkpoint:
            record["seconds_before_resume"] = time.time() - t0
            ckpt.save(done, params, opt, sched, record)
            if done == cfg.stop_after:
                return None, record, ckpt
    model.eval()
    record["dev_after"] = dev_report(model, dev, factors, bos_id, cfg.bf16)
    record["seconds"] = round(time.time() - t0, 1)
    record["decoder_fingerprint"] = models.fingerprint(decoder_dir)
    log.info("dev after: %s", record["dev_after"])
    return model, record, ckpt


def export(model: ArcModel, cfg: TrainConfig, record: dict, out: Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out, {"decoder": models.SMOLLM2, "decoder_fingerprint": record["decoder_fingerprint"],
                     "train": json.dumps(asdict(cfg), sort_keys=True)})
    record = {k: v for k, v in record.items() if k != "seconds_before_resume"}
    return models.write_card(
        out, asdict(cfg),
        parameters=sum(p.numel() for p in model.trainable()),
        model=json.loads(model.config.to_json()),
        data=soft.provenance(cfg.corpus.split(",")),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        **record,
    )


def main(cfg: TrainConfig, out: str | None, config) -> int:
    """`segpress train arc` (service/cli.py builds `cfg` from the flags)."""
    path = Path(out) if out else DEFAULT_WEIGHTS
    model, record, ckpt = train(config.cache_dir, cfg, path)
    if model is None:
        print(f"stopped after step {cfg.stop_after}; run again to resume from {ckpt.path}",
              file=sys.stderr)
        return 0
    card = export(model, cfg, record, path)
    ckpt.path.unlink(missing_ok=True)
    print(json.dumps({k: card[k] for k in ("file", "sha256", "bytes", "parameters", "seconds",
                                           "dev_before", "dev_after")}, indent=2), file=sys.stdout)
    return 0

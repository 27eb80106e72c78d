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
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import models
from ..arc_model import DEFAULT_WEIGHTS, ArcConfig, ArcModel, load_model
from . import soft


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
    rank: int = 64  # LoRA rank; 0: train the encoder's blocks in full
    factors: str = "4,8"  # pooling factors, alternated step by step
    start: str = "identity"  # "identity" or "mean": what the rows are before training (ArcConfig.start)
    causal: int = 0  # 1: keep the causal mask in the encoder (ArcConfig.causal)
    bf16: bool = True  # decoder passes in bfloat16 autocast
    dev_examples: int = 24  # held-out examples (split "dev") scored before and after
    checkpoint_every: int = 25
    corpus: str = "essays,prose"  # text sources (compressors/training/soft.py)
    stop_after: int = 0  # stop at a checkpoint after this step, to resume later; 0: run to the end
    init_from: str = ""  # start from these trained weights (their layers, rank, factors) instead of fresh ones


def encoder(model: ArcModel, factor: int, batch_width: bool = False) -> soft.Encode:
    """The rows of segments at pooling `factor`. With `batch_width`, padded
    only to the batch's longest segment (training: the same rows up to
    rounding, less work on short segments) instead of the served width."""
    width = math.lcm(*model.config.factors) if batch_width else None
    return lambda segments: model.rows(segments, (factor,), width)[factor]


def train(cache_dir: str, cfg: TrainConfig, out: Path):
    torch.manual_seed(cfg.seed)
    decoder_dir = models.ensure_smollm2(Path(cache_dir) / "models")
    if cfg.init_from:
        model, tok = load_model(decoder_dir, cfg.init_from)
    else:
        arc = ArcConfig(layers=cfg.layers, factors=tuple(int(f) for f in cfg.factors.split(",")),
                        rank=cfg.rank, alpha=2.0 * cfg.rank, start=cfg.start,
                        causal=bool(cfg.causal))
        model, tok = load_model(decoder_dir, None, config=arc)
    factors = model.config.factors
    bos_id = tok.convert_tokens_to_ids("<|endoftext|>")  # documents start after it
    data, dev = soft.train_and_dev(cache_dir, tok, cfg, model.config.segment_tokens)

    def step_loss(step: int, batch: list[dict]):
        factor = factors[step % len(factors)]  # alternate, so one set of weights serves every factor
        return soft.batch_loss(model, encoder(model, factor, batch_width=True), batch, bos_id, cfg.bf16)

    def dev_report() -> dict:
        return soft.dev_report(model, dev, {f"x{f}": encoder(model, f) for f in factors}, bos_id, cfg.bf16)

    finished, record = soft.train_loop(model, cfg, soft.batches(data, cfg.batch_size), step_loss, dev_report,
                                       out.with_suffix(".ckpt"))
    if cfg.init_from:  # the card of the weights this run continues is in git history
        record["init_from_sha256"] = hashlib.sha256(Path(cfg.init_from).read_bytes()).hexdigest()
    return finished, model, record, decoder_dir


def main(cfg: TrainConfig, out: str | None, config) -> int:
    """`segpress train arc` (service/cli.py builds `cfg` from the flags)."""
    path = Path(out) if out else DEFAULT_WEIGHTS
    finished, model, record, decoder_dir = train(config.cache_dir, cfg, path)
    return soft.finish(finished, model, cfg, record, path, decoder_dir)

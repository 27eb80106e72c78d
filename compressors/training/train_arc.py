"""`segpress train arc`: teaches arc (complm's CEs pooled, compressors/
arc_model.py) to write rows the frozen SmolLM2 decoder reads as its context.

The start is complm's shipped weights with the pooling parts untrained (the
rows are then the averaged CEs), or with `--init-from` arc weights to
continue. Everything trains: complm's LoRA, head and task rows, the
per-factor rows and the projector. Examples come from
compressors/training/soft.py: a stretch of a training document, its
segments (the server's segmenter, at most ArcConfig.segment_tokens tokens
each) and a task, reconstruction with probability `rec_share`, else
continuation:

    rows  = concat over segments of ArcModel.rows(segment, x)   x: drawn per example
    loss  = CE(decoder([eot, rows, <task>, targets]) on targets)
            (+ distill * KL(full-text teacher || rows) on continuation targets)
            targets: the next `continuation` tokens (cont) or the context (rec)

Each example of a step gets its own factor, drawn from the weights' factors
(fixed by the seed and the step, as the GPU driver does), so one set of
weights serves every factor (ARC's appendix: mixing factors generalises,
fine-tuning from one factor to another does not). The decoder passes run
in bfloat16 autocast, the trained tensors in float32. Checkpoints
(`<out>.ckpt`) every `checkpoint_every` steps; a run started again with the
same flags resumes from the last one. The result (float16) and a JSON card
(command, data, config, loss history, dev numbers per factor) go to `--out`.
"""

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import models
from ..arc_model import DEFAULT_WEIGHTS, ArcConfig, ArcModel, load_model
from ..complm_model import DEFAULT_WEIGHTS as COMPLM_WEIGHTS
from . import soft
from .loop import SoftTrainConfig, finish, train_loop


@dataclass
class TrainConfig(SoftTrainConfig):
    factors: str = "2,4,8"  # pooling factors of fresh weights, one drawn per example
    init_from: str = ""  # continue these arc weights (their factors) instead of starting from complm's


def drawn_factors(factors: tuple[int, ...], seed: int, step: int, batch: list[dict]) -> list[int]:
    """A factor per segment of `batch`: one drawn from `factors` for each
    example (all its segments), fixed by `seed` and `step`."""
    rng = random.Random(f"factors-{seed}-{step}")
    return [f for ex in batch for f in [rng.choice(factors)] * len(ex["segments"])]


def encoder(model: ArcModel, digits: frozenset[int], factor_of) -> soft.Encode:
    """The rows of segments as the server makes them, segment k's at pooling
    `factor_of(k)`: runs of `digits` pass verbatim, each other run is pooled
    on its own (soft.runs_encoder)."""
    return soft.runs_encoder(lambda runs, owners: model.rows(runs, [factor_of(k) for k in owners]),
                             model.embed, digits)


def one_factor(model: ArcModel, digits: frozenset[int], factor: int) -> soft.Encode:
    """The rows of segments at pooling `factor`."""
    return encoder(model, digits, lambda k: factor)


def start(decoder_dir: Path, cfg: TrainConfig) -> tuple[ArcModel, object, dict]:
    """(model, tokenizer, the card's `init`): the arc weights of
    `cfg.init_from`, or complm's shipped weights with untrained pooling."""
    if cfg.init_from:
        path = Path(cfg.init_from)
        model, tok = load_model(decoder_dir, path)
        init = {"arc_weights": path.name}
    else:
        path = COMPLM_WEIGHTS
        config = ArcConfig(factors=tuple(int(f) for f in cfg.factors.split(",")))
        model, tok = load_model(decoder_dir, None, config=config, complm_weights=path)
        init = {"complm_weights": str(path.relative_to(models.WEIGHTS_DIR.parent.parent))}
    init["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return model, tok, init


def train(cache_dir: str, cfg: TrainConfig, out: Path):
    torch.manual_seed(cfg.seed)
    decoder_dir = models.ensure_smollm2(Path(cache_dir) / "models")
    model, tok, init = start(decoder_dir, cfg)
    bos_id = tok.convert_tokens_to_ids("<|endoftext|>")  # documents start after it
    data, dev = soft.train_and_dev(cache_dir, tok, cfg, model.config.segment_tokens)
    digits = soft.verbatim_ids(tok, cfg.verbatim_digits)

    def step_loss(step: int, batch: list[dict]):
        factors = drawn_factors(model.config.factors, cfg.seed, step, batch)
        return soft.batch_loss(model, encoder(model, digits, factors.__getitem__), batch, bos_id, cfg.bf16,
                               cfg.distill)

    def dev_report() -> dict:
        return soft.dev_report(model, dev, {f"x{f}": one_factor(model, digits, f) for f in model.config.factors},
                               bos_id, cfg.bf16)

    finished, record = train_loop(model, cfg, soft.batches(data, cfg.batch_size), step_loss, dev_report,
                                       out.with_suffix(".ckpt"))
    record["init"] = init  # by file name and sha256: the weights' own card is in git history
    return finished, model, record, decoder_dir


def main(cfg: TrainConfig, out: str | None, config) -> int:
    """`segpress train arc` (service/cli.py builds `cfg` from the flags)."""
    path = Path(out) if out else DEFAULT_WEIGHTS
    finished, model, record, decoder_dir = train(config.cache_dir, cfg, path)
    return finish(finished, model, cfg, record, path, decoder_dir)

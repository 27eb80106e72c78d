"""`segpress train complm`: teaches the LoRA, the head and the task rows to
write concept embeddings (CEs) the frozen decoder reads as its context.

The decoder (SmolLM2-135M-Instruct) is both the base of the compressor and
the frozen reader. Examples come from compressors/training/soft.py: a
stretch of a training document, cut into segments of at most
CompLLMConfig.segment_tokens tokens by the segmenter the server uses, and a
task, reconstruction with probability `rec_share`, else continuation:

    CEs   = concat over segments of CompLLMModel.concept_embeddings(segment)
            (digits as the decoder's embeddings, as the server makes CEs: encoder())
    loss  = CE(decoder([eot, CEs, <task>, targets]) on targets)
            targets: the next `continuation` tokens (cont) or the context (rec)

Reconstruction gives every context token as a target with no teacher pass
(ICAE, ARC-Encoder); the learned <Rec>/<Cont> rows tell the decoder which
task it is on, and the server ends every context's CEs with <Cont>.
Gradients flow through the frozen decoder into the CEs, and from there into
the head, the LoRA and the task rows. Everything is seeded; the decoder
passes run in bfloat16 autocast, the trained tensors in float32.
Checkpoints (`<out>.ckpt`) every `checkpoint_every` steps; a run started
again with the same flags resumes from the last one. The result (float16)
goes to compressors/weights/complm-smollm2-135m.safetensors (or `--out`)
with a JSON card beside it: command, data, dev numbers, loss history.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import models
from ..complm import DEFAULT_WEIGHTS
from ..complm_model import MLP, CompLLMConfig, load_model
from . import soft
from .loop import SoftTrainConfig, finish, train_loop

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class TrainConfig(SoftTrainConfig):
    steps: int = 600
    lr: float = 1e-3
    rank: int = 32  # LoRA rank
    mlp: bool = True  # LoRA on the MLP's linears too, not only attention's
    init_from: str = ""  # start from these trained weights (their rank and targets) instead of fresh ones


def encoder(model, digits: frozenset[int]) -> soft.Encode:
    """The CEs of segments as the server makes them: runs of `digits` pass
    verbatim, each other run is encoded on its own (soft.runs_encoder)."""
    return soft.runs_encoder(lambda runs, owners: model.concept_embeddings(runs), model.embed, digits)


def train(cache_dir: str, cfg: TrainConfig, out: Path):
    torch.manual_seed(cfg.seed)
    decoder_dir = models.ensure_smollm2(Path(cache_dir) / "models")
    if cfg.init_from:
        model, tok = load_model(decoder_dir, cfg.init_from)
    else:
        config = CompLLMConfig(rank=cfg.rank, alpha=2.0 * cfg.rank, targets=ATTENTION + (MLP if cfg.mlp else ()))
        model, tok = load_model(decoder_dir, None, config=config)
    bos_id = tok.convert_tokens_to_ids("<|endoftext|>")  # documents start after it
    data, dev = soft.train_and_dev(cache_dir, tok, cfg, model.config.segment_tokens)
    ces = encoder(model, soft.verbatim_ids(tok, cfg.verbatim_digits))

    def step_loss(step: int, batch: list[dict]):
        return soft.batch_loss(model, ces, batch, bos_id, cfg.bf16, cfg.distill)

    def dev_report() -> dict:
        return soft.dev_report(model, dev, {"ces": ces}, bos_id, cfg.bf16)

    finished, record = train_loop(model, cfg, soft.batches(data, cfg.batch_size), step_loss, dev_report,
                                       out.with_suffix(".ckpt"))
    return finished, model, record, decoder_dir


def main(cfg: TrainConfig, out: str | None, config) -> int:
    """`segpress train complm` (service/cli.py builds `cfg` from the flags)."""
    path = Path(out) if out else DEFAULT_WEIGHTS
    finished, model, record, decoder_dir = train(config.cache_dir, cfg, path)
    return finish(finished, model, cfg, record, path, decoder_dir)

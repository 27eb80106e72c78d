"""arc's model: complm's concept embeddings pooled to fewer rows (issue 25).

compressors/arc.py explains the method and serves it; this module is the
math (ArcModel.rows), its configuration and its weights.

complm's encoder (the decoder with its LoRA and head, compressors/
complm_model.py) turns a segment of n tokens into k = ceil(n / 2) concept
embeddings (CEs). For a pooling factor x (a multiple of 2), adjacent groups
of g = x / 2 CEs are averaged, and a small projector refines each average:

    ce   = CompLLMModel.all_concept_embeddings(segment)   [k, D]
    m_r  = mean(ce[r*g] .. ce[r*g + g - 1])                [ceil(k / g), D]   (the last group may be short)
    z_r  = m_r + b_x                                       b_x: a learned row per factor, zero at first
    row  = z_r + W2 gelu(W1 z_r)                           W2 zero at first

so untrained (from complm's weights) the rows are exactly the averaged CEs,
the free baseline, and training starts from there. One set of weights serves
every factor in `factors`; at factor 2 the rows are the CEs themselves, plus
what the projector learned. The CEs do not depend on the factor, so one
encoder pass gives every factor's rows (rows_every_factor). The LoRA, head
and task rows are complm's, trained further with the rest. Trained weights
are all of those (float16, about 22 MB); the decoder comes from its own
checkpoint.
"""

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .complm_model import DEFAULT_WEIGHTS as COMPLM_WEIGHTS
from .complm_model import CompLLMConfig, CompLLMModel
from .lora import load_trained, save_trained
from .models import WEIGHTS_DIR

# The trained weights that ship with segpress.
DEFAULT_WEIGHTS = WEIGHTS_DIR / "arc-smollm2-135m.safetensors"


@dataclass(frozen=True)
class ArcConfig:
    """What a set of trained weights was made with (stored in its metadata)."""

    factors: tuple[int, ...] = (2, 4, 8)  # tokens per row the weights serve
    segment_tokens: int = 40  # most tokens per segment (complm's encoder reads them whole)

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "factors": list(self.factors)}, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ArcConfig":
        d = json.loads(s)
        return cls(**{**d, "factors": tuple(d["factors"])})


class ArcModel(nn.Module):
    """complm's model (decoder frozen, LoRA, head, task rows) plus the
    per-factor rows and the projector."""

    def __init__(self, complm: CompLLMModel, config: ArcConfig = ArcConfig()):
        super().__init__()
        per_ce = complm.config.tokens_per_ce
        if any(f % per_ce for f in config.factors):
            raise ValueError(f"pooling factors {config.factors} must be multiples of {per_ce}")
        # complm's encoder pads to its segment length: ours
        complm.config = replace(complm.config, segment_tokens=config.segment_tokens)
        self.complm = complm
        self.config = config
        hidden = complm.decoder.config.hidden_size
        self.factor_rows = nn.Parameter(torch.zeros(len(config.factors), hidden))  # [factors, D]: b_x
        self.proj_in = nn.Linear(hidden, hidden, bias=False)  # W1
        self.proj_out = nn.Linear(hidden, hidden, bias=False)  # W2
        nn.init.zeros_(self.proj_out.weight)

    # what soft.batch_loss reads: the frozen decoder, its embeddings, the task rows
    @property
    def decoder(self):
        return self.complm.decoder

    @property
    def embed(self) -> nn.Embedding:
        return self.complm.embed

    def task(self, name: str) -> torch.Tensor:
        """The learned row [D] of task `name` ("cont" or "rec"): complm's."""
        return self.complm.task(name)

    def n_rows(self, n_tokens: int, factor: int) -> int:
        """Rows of a segment of `n_tokens` tokens at `factor`: ceil(n / factor)."""
        return math.ceil(self.complm.slots(n_tokens) / (factor // self.complm.config.tokens_per_ce))

    # -- the rows ------------------------------------------------------------------

    def rows(self, segments: list[list[int]], factors: list[int]) -> list[torch.Tensor]:
        """Each segment's rows [n_i, D] at its own factor (`factors[i]`): the
        CEs in one encoder pass, then pooled (training mixes factors in a batch)."""
        ces, ks = self.complm.all_concept_embeddings(segments)  # [K, D], K = sum k_i
        return self.pool(ces, ks, factors)

    def rows_every_factor(self, segments: list[list[int]]) -> dict[int, list[torch.Tensor]]:
        """For every factor x of the weights, each segment's rows [n_i, D]:
        one encoder pass for all of them (what the server caches)."""
        ces, ks = self.complm.all_concept_embeddings(segments)  # [K, D]
        return {f: self.pool(ces, ks, [f] * len(ks)) for f in self.config.factors}

    def pool(self, ces: torch.Tensor, ks: list[int], factors: list[int]) -> list[torch.Tensor]:
        """Segment i's rows [n_i, D] at factor `factors[i]` from its k_i CEs,
        `ces` being every segment's CEs one after another [K, D]. All R =
        sum n_i rows get one mean and one projector."""
        device = ces.device
        owner, size, which, ns = [], [], [], []  # each CE's row; each row's CEs and factor; rows per segment
        for k, f in zip(ks, factors):
            g = f // self.complm.config.tokens_per_ce  # CEs per row
            n = math.ceil(k / g)  # rows of this segment; the last one holds k - g (n - 1) CEs
            owner += [len(size) + j // g for j in range(k)]
            size += [g] * (n - 1) + [k - g * (n - 1)]
            which += [self.config.factors.index(f)] * n
            ns.append(n)
        sums = ces.new_zeros((len(size), ces.shape[-1])).index_add_(
            0, torch.tensor(owner, device=device), ces)  # [R, D]
        m = sums / torch.tensor(size, dtype=ces.dtype, device=device)[:, None]  # [R, D]: m_r
        z = m + self.factor_rows[torch.tensor(which, device=device)].to(ces.dtype)  # [R, D]: m_r + b_x
        rows = z + self.proj_out(F.gelu(self.proj_in(z)))  # [R, D]
        return list(rows.split(ns))

    # -- trained weights: complm's LoRA, head and task rows + ours -------------

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {**self.complm.trained_state(), "factor_rows": self.factor_rows.detach(),
                "proj_in.weight": self.proj_in.weight.detach(), "proj_out.weight": self.proj_out.weight.detach()}

    def trainable(self) -> list[nn.Parameter]:
        return self.complm.trainable() + [self.factor_rows, self.proj_in.weight, self.proj_out.weight]

    def config_metadata(self) -> dict[str, str]:
        """What load_model reads back from a weights file's metadata."""
        return {"config": self.config.to_json(), "complm_config": self.complm.config.to_json()}

    def save(self, path: str | Path, metadata: dict[str, str]) -> None:
        save_trained(self.trained_state(), path, {**self.config_metadata(), **metadata})

    def load(self, path: str | Path) -> None:
        load_trained(self.trained_state(), path, "arc (pooled complm) weights")


def load_model(decoder_dir: str | Path, weights: str | Path | None = DEFAULT_WEIGHTS,
               dtype: str = "float32", device: str = "cpu", config: ArcConfig | None = None,
               complm_weights: str | Path = COMPLM_WEIGHTS, fold: bool = False):
    """(ArcModel, tokenizer) for the decoder checkpoint in `decoder_dir`:
    trained weights from `weights` (their configs with them), or, when
    weights is None, the warm start: complm's trained weights from
    `complm_weights` (default: the shipped ones) with new pooling parts
    (`config`, default ArcConfig()). `fold`: complm's LoRA folded into the
    layers it adapts (in float32, before the cast to `dtype`), for serving:
    faster, but the decoder is then no longer the one that reads the rows."""
    from safetensors import safe_open

    from .complm_model import load_model as load_complm

    if weights is not None:
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata() or {}
        if "complm_config" not in meta:
            raise ValueError(f"{weights} are not arc weights of this version (complm's CEs pooled: "
                             "no complm_config in their metadata); train them with `segpress train arc` "
                             "or use the shipped ones")
        config = ArcConfig.from_json(meta["config"])
        complm, tok = load_complm(decoder_dir, None, config=CompLLMConfig.from_json(meta["complm_config"]))
        model = ArcModel(complm, config)
        model.load(weights)
    else:
        complm, tok = load_complm(decoder_dir, complm_weights)
        model = ArcModel(complm, config or ArcConfig())
    if fold:
        for lora in model.complm.loras:
            lora.fold()
    return model.to(device=device, dtype=getattr(torch, dtype)).eval(), tok

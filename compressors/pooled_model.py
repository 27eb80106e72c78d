"""complm's concept embeddings pooled to fewer rows: arc built on the
compressor that already works (issue 25).

complm's encoder (the decoder with its LoRA and head, compressors/
complm_model.py) turns a segment of n tokens into k = ceil(n / 2) CEs. For a
pooling factor x (a multiple of 2), adjacent groups of g = x / 2 CEs are
averaged, and a small projector refines each average:

    ce   = CompLLMModel.all_concept_embeddings(segment)   [k, D]
    m_r  = mean(ce[r*g] .. ce[r*g + g - 1])                [ceil(k / g), D]   (the last group may be short)
    z_r  = m_r + b_x                                       b_x: a learned row per factor, zero at first
    row  = z_r + W2 gelu(W1 z_r)                           W2 zero at first

so untrained (from complm's weights) the rows are exactly the averaged CEs,
the free baseline, and training starts from there. One set of weights serves
every factor in `factors`; at factor 2 the rows are the CEs themselves, plus
what the projector learned. The LoRA, head and task rows are complm's,
trained further with the rest.
"""

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .complm_model import CompLLMConfig, CompLLMModel
from .lora import load_trained, save_trained


@dataclass(frozen=True)
class PooledConfig:
    """What a set of trained weights was made with (stored in its metadata)."""

    factors: tuple[int, ...] = (2, 4, 8)  # tokens per row the weights serve
    segment_tokens: int = 40  # most tokens per segment (complm's encoder reads them whole)

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "factors": list(self.factors)}, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "PooledConfig":
        d = json.loads(s)
        return cls(**{**d, "factors": tuple(d["factors"])})


class PooledModel(nn.Module):
    """complm's model (decoder frozen, LoRA, head, task rows) plus the
    per-factor rows and the projector."""

    def __init__(self, complm: CompLLMModel, config: PooledConfig = PooledConfig()):
        super().__init__()
        per_ce = complm.config.tokens_per_ce
        if any(f % per_ce for f in config.factors):
            raise ValueError(f"pooling factors {config.factors} must be multiples of {per_ce}")
        # complm's encoder pads to its segment length: ours
        complm.config = replace(complm.config, segment_tokens=config.segment_tokens)
        self.complm = complm
        self.config = config
        hidden = complm.decoder.config.hidden_size
        self.factor_rows = nn.Parameter(torch.zeros(len(config.factors), hidden))  # [factors, D]
        self.proj_in = nn.Linear(hidden, hidden, bias=False)
        self.proj_out = nn.Linear(hidden, hidden, bias=False)
        nn.init.zeros_(self.proj_out.weight)

    # what soft.batch_loss reads: the frozen decoder, its embeddings, the task rows
    @property
    def decoder(self):
        return self.complm.decoder

    @property
    def embed(self) -> nn.Embedding:
        return self.complm.embed

    def task(self, name: str) -> torch.Tensor | None:
        return self.complm.task(name)

    def n_rows(self, n_tokens: int, factor: int) -> int:
        """Rows of a segment of `n_tokens` tokens at `factor`."""
        return math.ceil(self.complm.slots(n_tokens) / (factor // self.complm.config.tokens_per_ce))

    def rows(self, segments: list[list[int]], factors: list[int]) -> list[torch.Tensor]:
        """Each segment's rows [n_i, D] at its factor (`factors[i]`): the CEs
        in one forward pass, then one mean and one projector for all rows."""
        ces, ks = self.complm.all_concept_embeddings(segments)  # [K, D]
        device, per_ce = ces.device, self.complm.config.tokens_per_ce
        group, size, which, ns = [], [], [], []  # each CE's row; each row's CEs and factor; rows per segment
        for k, f in zip(ks, factors):
            g = f // per_ce
            n = math.ceil(k / g)
            group += [len(size) + j // g for j in range(k)]
            size += [g] * (n - 1) + [k - g * (n - 1)]
            which += [self.config.factors.index(f)] * n
            ns.append(n)
        size_t = torch.tensor(size, dtype=ces.dtype, device=device)
        mean = ces.new_zeros((len(size), ces.shape[-1])).index_add_(0, torch.tensor(group, device=device), ces)
        z = mean / size_t[:, None] + self.factor_rows[torch.tensor(which, device=device)].to(ces.dtype)  # [R, D]
        return list((z + self.proj_out(F.gelu(self.proj_in(z)))).split(ns))

    # -- trained weights: complm's LoRA, head and task rows + ours -------------

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {**self.complm.trained_state(), "factor_rows": self.factor_rows.detach(),
                "proj_in.weight": self.proj_in.weight.detach(), "proj_out.weight": self.proj_out.weight.detach()}

    def trainable(self) -> list[nn.Parameter]:
        return self.complm.trainable() + [self.factor_rows, self.proj_in.weight, self.proj_out.weight]

    def save(self, path: str | Path, metadata: dict[str, str]) -> None:
        save_trained(self.trained_state(), path, {"config": self.config.to_json(),
                                                  "complm_config": self.complm.config.to_json(), **metadata})

    def load(self, path: str | Path) -> None:
        load_trained(self.trained_state(), path, "pooled complm weights")


def load_model(decoder_dir: str | Path, weights: str | Path | None, dtype: str = "float32",
               device: str = "cpu", config: PooledConfig | None = None, complm_weights: str | Path | None = None):
    """(PooledModel, tokenizer): trained weights from `weights` (their
    configs with them), or, when weights is None, complm's trained weights
    from `complm_weights` (the warm start) with new pooling parts (`config`)."""
    from safetensors import safe_open

    from .complm_model import load_model as load_complm

    if weights is not None:
        with safe_open(str(weights), "pt") as f:
            meta = f.metadata()
        config = PooledConfig.from_json(meta["config"])
        complm, tok = load_complm(decoder_dir, None, config=CompLLMConfig.from_json(meta["complm_config"]))
        model = PooledModel(complm, config)
        model.load(weights)
    else:
        complm, tok = load_complm(decoder_dir, complm_weights)
        model = PooledModel(complm, config or PooledConfig())
    return model.to(device=device, dtype=getattr(torch, dtype)).eval(), tok

"""The CompLLM model: a frozen decoder, a LoRA on it, a linear head and (for
weights trained with them) the <Cont>/<Rec> task rows.

compressors/complm.py explains the method and serves it; this module is the
math (CompLLMModel.concept_embeddings), its configuration and its weights.
The LoRA is on only while compressing; with it off, the same module is the
unchanged decoder that reads the CEs. Trained weights are the LoRA, the
head and the task rows only (a few MB to 20 MB); the decoder comes from its
own checkpoint.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .base import pad_right
from .lora import LoRALinear, load_on_decoder, load_trained, save_trained
from .models import WEIGHTS_DIR

# The trained LoRA + head that ship with segpress.
DEFAULT_WEIGHTS = WEIGHTS_DIR / "complm-smollm2-135m.safetensors"


@dataclass(frozen=True)
class CompLLMConfig:
    """What a set of trained weights was made with (stored in its metadata)."""

    segment_tokens: int = 20  # S: most tokens per segment
    tokens_per_ce: int = 2  # C: segment tokens per concept embedding
    rank: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scale = alpha / rank
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # LoRA'd linears of every layer

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "targets": list(self.targets)}, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "CompLLMConfig":
        d = json.loads(s)
        if "rate" in d:  # weights saved before the field was renamed
            d["tokens_per_ce"] = d.pop("rate")
        # Older weights name the two choices every served model now makes:
        # CEs start at their tokens' mean embedding, and <Cont>/<Rec> rows.
        if d.pop("start", "mean") != "mean" or not d.pop("tasks", True):
            raise ValueError("these complm weights were trained with an ablation segpress no longer "
                             "serves (zero start or no task rows); retrain with `segpress train complm`")
        return cls(**{**d, "targets": tuple(d["targets"])})


MLP = ("gate_proj", "up_proj", "down_proj")  # LoRA targets in a layer's MLP; the rest are attention's
TASKS = ("cont", "rec")  # continue after the context / repeat the context


class CompLLMModel(nn.Module):
    """The decoder (frozen), its LoRA (on only while compressing), the head
    and the task rows. A CE is the mean input embedding of its tokens plus
    the head's output on the hidden state at its slot."""

    def __init__(self, decoder, eos_id: int, config: CompLLMConfig = CompLLMConfig()):
        super().__init__()
        self.decoder = decoder.requires_grad_(False)
        self.config = config
        self.eos_id = eos_id
        self.loras: list[LoRALinear] = []
        for layer in decoder.model.layers:
            for name in config.targets:
                parent = layer.mlp if name in MLP else layer.self_attn
                lora = LoRALinear(getattr(parent, name), config.rank, config.alpha)
                setattr(parent, name, lora)
                self.loras.append(lora)
        hidden = decoder.config.hidden_size
        self.head = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # Each CE starts as the mean input embedding of the C tokens it
        # stands for, rescaled to the embeddings' RMS, and the head (zero at
        # first) learns what to add.
        self.register_buffer("embed_rms", self.embed.weight.detach().pow(2).mean().sqrt(), persistent=False)
        # Task rows, read after a context's CEs: they start as the mean input
        # embedding and learn to say "continue" or "repeat".
        self.tasks = nn.ParameterDict({t: nn.Parameter(self.embed.weight.detach().mean(0).clone())
                                       for t in TASKS})  # [hidden] each
        self.set_lora(False)

    @property
    def embed(self) -> nn.Embedding:
        return self.decoder.get_input_embeddings()

    def set_lora(self, enabled: bool) -> None:
        for lora in self.loras:
            lora.enabled = enabled

    def task(self, name: str) -> torch.Tensor:
        """The learned row [hidden] of task `name` ("cont" or "rec")."""
        return self.tasks[name]

    def slots(self, n_tokens: int) -> int:
        """CEs of a segment of `n_tokens` tokens."""
        return math.ceil(n_tokens / self.config.tokens_per_ce)

    def concept_embeddings(self, segments: list[list[int]]) -> list[torch.Tensor]:
        """CEs [k_i, hidden] of each segment (token ids), in one forward pass."""
        ces, ks = self.all_concept_embeddings(segments)
        return list(ces.split(ks))

    def all_concept_embeddings(self, segments: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
        """Every segment's CEs, one after another [sum k_i, hidden], and the
        k_i: one forward pass, and one head and mean for all of them."""
        device = self.head.weight.device
        ks = [self.slots(len(s)) for s in segments]
        seqs = [s + [self.eos_id] * k for s, k in zip(segments, ks)]
        # One fixed width (S + S/C, more only for a longer segment), so that a
        # segment's CEs do not depend on which other segments share its batch.
        # Right padding: causal attention never sees it.
        ids, mask = pad_right(seqs, self.eos_id,
                              width=self.config.segment_tokens + self.slots(self.config.segment_tokens) + 2)
        self.set_lora(True)
        try:
            h = self.decoder.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                                   use_cache=False).last_hidden_state  # [B, width, hidden]
        finally:
            self.set_lora(False)
        # segment i's slots are positions n_i .. n_i + k_i - 1 of its row
        row = torch.tensor([i for i, k in enumerate(ks) for _ in range(k)], device=device)  # [K]
        col = torch.tensor([len(s) + j for s, k in zip(segments, ks) for j in range(k)], device=device)  # [K]
        ces = self.head(h[row, col].to(self.head.weight.dtype))  # [K, hidden]
        return ces + self.mean_embeddings(segments, ks).to(ces.dtype), ks

    def mean_embeddings(self, segments: list[list[int]], ks: list[int]) -> torch.Tensor:
        """[sum k_i, hidden]: the mean input embedding of each CE's C tokens
        (the last CE of a segment may have fewer), rescaled to the RMS of the
        decoder's input embeddings."""
        device, C = self.embed_rms.device, self.config.tokens_per_ce
        first = [0]  # each segment's first CE
        for k in ks[:-1]:
            first.append(first[-1] + k)
        tokens = torch.tensor([t for s in segments for t in s], device=device)  # [T]
        slot = torch.tensor([f + j // C for s, f in zip(segments, first) for j in range(len(s))], device=device)
        count = torch.tensor([min(C, len(s) - j * C) for s, k in zip(segments, ks) for j in range(k)],
                             device=device)  # [K]: tokens of each CE
        e = self.embed(tokens)  # [T, hidden]
        mean = e.new_zeros((sum(ks), e.shape[-1])).index_add_(0, slot, e) / count[:, None]
        return mean * self.embed_rms / mean.pow(2).mean(-1, keepdim=True).sqrt()

    # -- trained weights: LoRA + head, nothing of the base ----------------------

    def trained_state(self) -> dict[str, torch.Tensor]:
        state = {"head.weight": self.head.weight, "head.bias": self.head.bias,
                 **{f"task.{t}": p for t, p in self.tasks.items()}}
        for i, lora in enumerate(self.loras):
            state[f"lora.{i}.A"] = lora.A
            state[f"lora.{i}.B"] = lora.B
        return {k: v.detach() for k, v in state.items()}

    def trainable(self) -> list[nn.Parameter]:
        return ([p for lora in self.loras for p in (lora.A, lora.B)] + list(self.head.parameters())
                + list(self.tasks.values()))

    def config_metadata(self) -> dict[str, str]:
        """What load_model reads back from a weights file's metadata."""
        return {"config": self.config.to_json()}

    def save(self, path: str | Path, metadata: dict[str, str]) -> None:
        save_trained(self.trained_state(), path, {**self.config_metadata(), **metadata})

    def load(self, path: str | Path) -> None:
        load_trained(self.trained_state(), path, "complm LoRA + head")


def load_model(decoder_dir: str | Path, weights: str | Path | None = DEFAULT_WEIGHTS,
               dtype: str = "float32", device: str = "cpu", config: CompLLMConfig | None = None,
               fold: bool = False):
    """(CompLLMModel, tokenizer) for the decoder checkpoint in `decoder_dir`,
    with the trained LoRA + head from `weights` (their config with them), or
    untrained with `config` (default CompLLMConfig()) when weights is None.
    `fold`: LoRA folded in, for serving (lora.load_on_decoder)."""
    return load_on_decoder(CompLLMModel, CompLLMConfig, decoder_dir, weights, dtype, device, config, fold)

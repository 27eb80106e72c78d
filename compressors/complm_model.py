"""The CompLLM model: a frozen decoder, a LoRA on it, and a linear head.

compressors/complm.py explains the method and serves it; this module is the
math (CompLLMModel.concept_embeddings), its configuration and its weights.
The LoRA is on only while compressing; with it off, the same module is the
unchanged decoder that reads the CEs. Trained weights are the LoRA and the
head only (a few MB); the decoder comes from its own checkpoint.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .base import pad_right
from .lora import LoRALinear, load_trained, save_trained
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
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "targets": list(self.targets)}, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "CompLLMConfig":
        d = json.loads(s)
        if "rate" in d:  # weights saved before the field was renamed
            d["tokens_per_ce"] = d.pop("rate")
        return cls(**{**d, "targets": tuple(d["targets"])})


class CompLLMModel(nn.Module):
    """The decoder (frozen), its LoRA (on only while compressing) and the head."""

    def __init__(self, decoder, eos_id: int, config: CompLLMConfig = CompLLMConfig()):
        super().__init__()
        self.decoder = decoder.requires_grad_(False)
        self.config = config
        self.eos_id = eos_id
        self.loras: list[LoRALinear] = []
        for layer in decoder.model.layers:
            attn = layer.self_attn
            for name in config.targets:
                lora = LoRALinear(getattr(attn, name), config.rank, config.alpha)
                setattr(attn, name, lora)
                self.loras.append(lora)
        hidden = decoder.config.hidden_size
        self.head = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.set_lora(False)

    @property
    def embed(self) -> nn.Embedding:
        return self.decoder.get_input_embeddings()

    def set_lora(self, enabled: bool) -> None:
        for lora in self.loras:
            lora.enabled = enabled

    def slots(self, n_tokens: int) -> int:
        """CEs of a segment of `n_tokens` tokens."""
        return math.ceil(n_tokens / self.config.tokens_per_ce)

    def concept_embeddings(self, segments: list[list[int]]) -> list[torch.Tensor]:
        """CEs [k_i, hidden] of each segment (token ids), in one forward pass."""
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
        out = []
        for i, (s, k) in enumerate(zip(segments, ks)):
            out.append(self.head(h[i, len(s) : len(s) + k].to(self.head.weight.dtype)))
        return out

    # -- trained weights: LoRA + head, nothing of the base ----------------------

    def trained_state(self) -> dict[str, torch.Tensor]:
        state = {"head.weight": self.head.weight, "head.bias": self.head.bias}
        for i, lora in enumerate(self.loras):
            state[f"lora.{i}.A"] = lora.A
            state[f"lora.{i}.B"] = lora.B
        return {k: v.detach() for k, v in state.items()}

    def trainable(self) -> list[nn.Parameter]:
        return [p for lora in self.loras for p in (lora.A, lora.B)] + list(self.head.parameters())

    def save(self, path: str | Path, metadata: dict[str, str]) -> None:
        save_trained(self.trained_state(), path, {"config": self.config.to_json(), **metadata})

    def load(self, path: str | Path) -> None:
        load_trained(self.trained_state(), path, "complm LoRA + head")


def load_model(decoder_dir: str | Path, weights: str | Path | None = DEFAULT_WEIGHTS,
               dtype: str = "float32", device: str = "cpu", config: CompLLMConfig | None = None):
    """(CompLLMModel, tokenizer) for the decoder checkpoint in `decoder_dir`,
    with the trained LoRA + head from `weights` (their config with them), or
    untrained with `config` (default CompLLMConfig()) when weights is None."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or CompLLMConfig()
    if weights is not None:
        with safe_open(str(weights), "pt") as f:
            config = CompLLMConfig.from_json(f.metadata()["config"])
    tokenizer = AutoTokenizer.from_pretrained(decoder_dir)
    decoder = AutoModelForCausalLM.from_pretrained(decoder_dir, dtype=torch.float32)
    model = CompLLMModel(decoder, tokenizer.eos_token_id, config)
    if weights is not None:
        model.load(weights)
    return model.to(device=device, dtype=getattr(torch, dtype)).eval(), tokenizer

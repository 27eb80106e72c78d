"""LoRA (Hu et al., arXiv 2106.09685): a frozen linear layer plus a trained
low-rank update, which can be switched off so the same module is the base
layer again. complm and arc both train their compressor this way on top of
the decoder they write for."""

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * B A x while `enabled`; base stays frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.empty(rank, base.in_features))  # [r, in]
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))  # [out, r]: starts as a no-op
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = alpha / rank
        self.enabled = True
        self.folded = False  # fold(): the update is in base.weight

    def forward(self, x):
        y = self.base(x)
        if self.enabled and not self.folded:
            y = y + (x.to(self.A.dtype) @ self.A.T @ self.B.T).to(y.dtype) * self.scale
        return y

    @torch.no_grad()
    def fold(self) -> None:
        """Adds the update into the base layer's weight (W + scale * B A) for
        good: one matmul instead of three, on or off. For serving only: the
        base layer is no longer the frozen one."""
        self.base.weight += (self.B @ self.A * self.scale).to(self.base.weight.dtype)
        self.folded = True


def save_trained(state: dict[str, torch.Tensor], path, metadata: dict[str, str]) -> None:
    """The trained tensors `state` (LoRA and the rest) as float16 safetensors
    with `metadata` (the model's config and provenance)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}, str(path),
              metadata=metadata)


def load_trained(mine: dict[str, torch.Tensor], path, what: str) -> None:
    """Copies the tensors saved at `path` into `mine` (a model's trained
    tensors by name); refuses a file with other names or shapes."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    if set(state) != set(mine):
        raise ValueError(f"{path} does not hold {what} tensors for this model")
    with torch.no_grad():
        for k, v in state.items():
            if v.shape != mine[k].shape:
                raise ValueError(f"{path}: {k} is {tuple(v.shape)}, expected {tuple(mine[k].shape)}")
            mine[k].copy_(v.to(mine[k].dtype))


def load_on_decoder(model_cls, config_cls, decoder_dir, weights, dtype: str, device: str, config,
                    fold: bool = False):
    """(model, tokenizer): `model_cls(decoder, eos id, config)` on the
    decoder checkpoint in `decoder_dir`, with the trained tensors from
    `weights` and the config stored with them, or untrained with `config`
    (default `config_cls()`) when weights is None. With `fold`, every LoRA
    is folded into its base layer (in float32, before the cast to `dtype`):
    faster compressing, but the model's decoder is then no longer the
    unchanged one that reads the rows, and it cannot be trained further."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = config or config_cls()
    if weights is not None:
        with safe_open(str(weights), "pt") as f:
            config = config_cls.from_json(f.metadata()["config"])
    tokenizer = AutoTokenizer.from_pretrained(decoder_dir)
    decoder = AutoModelForCausalLM.from_pretrained(decoder_dir, dtype=torch.float32)
    model = model_cls(decoder, tokenizer.eos_token_id, config)
    if weights is not None:
        model.load(weights)
    if fold:
        for lora in model.loras:
            lora.fold()
    return model.to(device=device, dtype=getattr(torch, dtype)).eval(), tokenizer

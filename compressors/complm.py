"""CompLLM: each segment becomes concept embeddings (CEs) a frozen decoder reads.

CompLLM (Berton et al., Amazon 2025, arXiv 2509.19228) cuts the context into
short segments and compresses each one on its own into CEs: vectors in the
decoder's input-embedding space, C times fewer than the segment's tokens. The
compressor is the decoder itself with a LoRA and a linear head; the decoder
that later reads the CEs (in place of the text's token embeddings) is the same
model without the LoRA, frozen and unchanged. Segments are independent, so
compressing costs O(n * S) for n tokens and every segment's CEs are cached.

How one segment of n tokens t_1..t_n becomes k = ceil(n / C) CEs:

    x = [E(t_1) .. E(t_n), E(eos) x k]        E: the decoder's token embeddings
    h = decoder_with_LoRA(x)                  final hidden states (after the
                                              final norm), causal attention
    CE_j = W h[n + j] + b,  j = 0..k-1        the k slot positions; each slot
                                              sees the whole segment

Choices where the paper leaves details open (or where we differ):
- Segments: at most S = 20 tokens (the paper's S), cut by the shared
  segmenter, which prefers sentence ends and whitespace. Each segment is
  tokenized on its own, so the same text gives the same CEs in any context.
- Slots: k copies of the eos token after the segment, as in the paper;
  rotary positions tell them apart. C = 2 is fixed at training time: the rate
  is a property of the trained weights, not a request parameter, so what is
  cached does not depend on the request.
- LoRA: rank 8, alpha 16, on the q, k, v and o projections of every layer.
- Head: one Linear(hidden, hidden) with bias, zero-initialised (the CEs start
  at 0 and move where the decoder's loss pulls them).
- Training (compressors/train_complm.py): KL divergence between the frozen
  decoder's next-token distributions on continuation tokens after the full
  text and after the CEs (the paper distils hidden states on answer tokens;
  the KL on the output is the quantity `segpress eval complm` measures).

What the cache holds per segment: the CEs as float32 [k, hidden]; `render`
concatenates a context's segments and reports each segment's row count.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cache.codec import Kind

from .base import ContextParts, InvalidParams, Rendered, Segment, pad_right
from .models import SMOLLM2, WEIGHTS_DIR, fingerprint, resolve_dtype
from .segmenter import split_segments

NAME = "complm"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "complm-smollm2-135m.safetensors"
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class CompLLMConfig:
    """What a set of trained weights was made with (stored in its metadata)."""

    segment_tokens: int = 20  # S: most tokens per segment
    rate: int = 2  # C: tokens per CE
    rank: int = 8  # LoRA rank
    alpha: float = 16.0  # LoRA scale = alpha / rank
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "targets": list(self.targets)}, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "CompLLMConfig":
        d = json.loads(s)
        return cls(**{**d, "targets": tuple(d["targets"])})


# -- the model -----------------------------------------------------------------


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

    def forward(self, x):
        y = self.base(x)
        if self.enabled:
            y = y + (x.to(self.A.dtype) @ self.A.T @ self.B.T).to(y.dtype) * self.scale
        return y


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
        return math.ceil(n_tokens / self.config.rate)

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
        from safetensors.torch import save_file

        state = {k: v.to(torch.float16).contiguous() for k, v in self.trained_state().items()}
        save_file(state, str(path), metadata={"config": self.config.to_json(), **metadata})

    def load(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(path))
        mine = self.trained_state()
        if set(state) != set(mine):
            raise ValueError(f"{path} does not hold complm LoRA + head tensors for this model")
        with torch.no_grad():
            for k, v in state.items():
                if v.shape != mine[k].shape:
                    raise ValueError(f"{path}: {k} is {tuple(v.shape)}, expected {tuple(mine[k].shape)}")
                mine[k].copy_(v.to(mine[k].dtype))


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


def weights_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


# -- the compressor --------------------------------------------------------------


@dataclass
class Params:
    output_dtype: str = "float32"  # element type of the returned tensors
    decoder: str = ""  # the decoder the caller will use; "" = ours

    def check(self) -> None:
        if self.output_dtype not in DTYPES:
            raise InvalidParams(f"complm.output_dtype must be one of {', '.join(DTYPES)}, "
                                f"got {self.output_dtype!r}")


class CompLLM:
    name = NAME
    kind = Kind.SOFT_TOKENS
    output = "tensor"
    Params = Params

    def __init__(self, decoder_dir: str | Path, weights: str | Path = DEFAULT_WEIGHTS,
                 device: str = "cpu", batch_size: int = 64, dtype: str = "float32"):
        self.dtype = resolve_dtype(dtype, device)
        self.model, self.tokenizer = load_model(decoder_dir, weights, self.dtype, device)
        self.config = self.model.config
        self.batch_size = batch_size
        self.max_segment_tokens = self.config.segment_tokens
        self.decoder_id = SMOLLM2
        self.decoder_fingerprint = fingerprint(decoder_dir)
        trained_for = weights_metadata(weights).get("decoder_fingerprint")
        if trained_for not in (None, self.decoder_fingerprint):
            raise ValueError(f"complm weights {weights} were trained for decoder {trained_for[:16]}..., "
                             f"not for {decoder_dir} ({self.decoder_fingerprint[:16]}...)")
        self.model_id = f"{NAME}:{Path(weights).name}"
        # The CEs depend on the decoder, the trained weights and the precision.
        h = hashlib.sha256(self.decoder_fingerprint.encode())
        h.update(Path(weights).read_bytes())
        self.fingerprint = h.hexdigest()
        self.cache_id = f"{self.fingerprint}:{self.dtype}"

    def check_params(self, params: Params) -> None:
        """The request's decoder must be the one the CEs are made for."""
        if params.decoder and params.decoder not in (self.decoder_id, self.decoder_fingerprint):
            raise InvalidParams(
                f"complm.decoder is {params.decoder!r}, but this server's complm makes concept "
                f"embeddings only for decoder {self.decoder_id!r} (fingerprint "
                f"{self.decoder_fingerprint}); leave complm.decoder empty or name that decoder")

    def segment(self, text: str) -> list[Segment]:
        return split_segments(text, self.tokenizer, self.max_segment_tokens)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> list[dict[str, np.ndarray]]:
        """Per segment: {"ces": float32 [ceil(tokens / C), hidden]}."""
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list = [None] * len(ids)
        for b in range(0, len(order), self.batch_size):
            batch = order[b : b + self.batch_size]
            for i, ce in zip(batch, self.model.concept_embeddings([ids[i] for i in batch])):
                out[i] = {"ces": ce.float().cpu().numpy()}
        return out

    def render(self, contexts: list[ContextParts], params: Params, query: str | None = None) -> list[Rendered]:
        """Each context's CEs, its segments' in order: float32 [rows, hidden].
        The pipeline converts them to params.output_dtype for the wire."""
        hidden = self.model.decoder.config.hidden_size
        out = []
        for c in contexts:
            rows = [e["ces"] for e in c.encoded]
            tensor = np.concatenate(rows) if rows else np.zeros((0, hidden), np.float32)
            out.append(Rendered(original_tokens=sum(s.n_tokens for s in c.segments),
                                compressed_tokens=len(tensor), tensor=tensor,
                                segment_rows=[len(r) for r in rows]))
        return out

"""The ARC encoder: the decoder's first blocks, bidirectional, pooled in the
last block, then a projector into the decoder's input-embedding space.

compressors/arc.py explains the method and serves it; this module is the
math (ArcModel.rows), its configuration and its weights. The encoder's blocks
are the decoder's own first `layers` blocks with a LoRA on every linear
layer; the LoRA is on only while encoding, so with it off the same modules
are the unchanged decoder that reads the rows. Trained weights are the LoRA,
the projector and the two task embeddings (a few MB); the decoder comes from
its own checkpoint. With rank 0 the encoder's blocks are instead copies of
the decoder's, trained in full and shipped with the weights (about 3.5M
parameters a block).
"""

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import pad_right
from .lora import LoRALinear, load_on_decoder, load_trained, save_trained
from .models import WEIGHTS_DIR

# The trained weights that ship with segpress.
DEFAULT_WEIGHTS = WEIGHTS_DIR / "arc-smollm2-135m.safetensors"
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
TASKS = ("cont", "rec")  # continue after the context / repeat the context


@dataclass(frozen=True)
class ArcConfig:
    """What a set of trained weights was made with (stored in its metadata)."""

    layers: int = 6  # encoder depth: the decoder's first blocks; the last one pools
    factors: tuple[int, ...] = (4, 8)  # pooling factors: tokens per row
    segment_tokens: int = 128  # most tokens per segment
    rank: int = 64  # LoRA rank on every linear layer of the encoder's blocks; 0: the blocks trained in full
    alpha: float = 128.0  # LoRA scale = alpha / rank
    start: str = "identity"  # "identity": row = projector(h), the projector a scaled identity at first;
    # "mean": row = mean input embedding of its tokens + projector(h), the projector zero at first
    causal: bool = False  # keep the decoder's causal mask in the encoder (ARC: off); a pooled
    # query then sees its group's tokens and those before

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "factors": list(self.factors)}, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ArcConfig":
        d = json.loads(s)
        return cls(**{**d, "factors": tuple(d["factors"])})


def rotate(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Llama's convention) of x [B, heads, L, hd]
    at positions pos [B, L] (fractional positions allowed)."""
    freqs = pos.to(torch.float32)[..., None] * inv_freq  # [B, L, hd/2]
    emb = torch.cat([freqs, freqs], -1)[:, None]  # [B, 1, L, hd]
    x1, x2 = x.chunk(2, -1)
    return (x * emb.cos() + torch.cat([-x2, x1], -1) * emb.sin()).to(x.dtype)


class ArcModel(nn.Module):
    """The decoder (frozen), the LoRA on its first blocks (on only while
    encoding), the projector and the task embeddings."""

    def __init__(self, decoder, pad_id: int, config: ArcConfig = ArcConfig()):
        super().__init__()
        self.decoder = decoder.requires_grad_(False)
        self.config = config
        self.pad_id = pad_id
        self.loras: list[LoRALinear] = []
        if not config.rank:  # full training: the encoder's own copies of the blocks, every weight trained
            self.blocks = nn.ModuleList(copy.deepcopy(b) for b in decoder.model.layers[: config.layers])
            self.blocks.requires_grad_(True)
        else:  # the decoder's own blocks, with a LoRA on every linear layer
            self.blocks = decoder.model.layers[: config.layers]
            for block in self.blocks:
                for path in LINEARS:
                    parent, name = path.split(".")
                    lora = LoRALinear(getattr(getattr(block, parent), name), config.rank, config.alpha)
                    setattr(getattr(block, parent), name, lora)
                    self.loras.append(lora)
        cfg = decoder.config
        D = cfg.hidden_size
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or D // self.heads
        rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": cfg.rope_theta}
        self.register_buffer("inv_freq", 1.0 / rope["rope_theta"] ** (
            torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim), persistent=False)
        # Projector: two bias-free linear layers, no activation. It starts as
        # a scaled identity that maps the final norm's output (RMS ~ the norm
        # weight's) to the RMS of the decoder's input embeddings, or (start
        # "mean") at zero.
        E = decoder.get_input_embeddings().weight
        scale = (E.pow(2).mean().sqrt() / decoder.model.norm.weight.pow(2).mean().sqrt()).item()
        self.proj_in = nn.Linear(D, D, bias=False)
        self.proj_out = nn.Linear(D, D, bias=False)
        with torch.no_grad():
            self.proj_in.weight.copy_(torch.eye(D))
            self.proj_out.weight.copy_(torch.eye(D) * scale if config.start == "identity" else torch.zeros(D, D))
        # With start "mean", each row also gets the mean input embedding of
        # the x tokens it stands for, rescaled to the embeddings' RMS, so it
        # carries their content from the first step (complm's start).
        self.register_buffer("embed_rms", E.detach().pow(2).mean().sqrt(), persistent=False)
        # Task embeddings, read after a context's rows: they start as the
        # mean input embedding and learn to say "continue" or "repeat".
        self.cont = nn.Parameter(E.detach().mean(0).clone())  # [D]
        self.rec = nn.Parameter(E.detach().mean(0).clone())  # [D]
        self.set_lora(False)

    @property
    def embed(self) -> nn.Embedding:
        return self.decoder.get_input_embeddings()

    def set_lora(self, enabled: bool) -> None:
        for lora in self.loras:
            lora.enabled = enabled

    def n_rows(self, n_tokens: int, factor: int) -> int:
        """Rows of a segment of `n_tokens` tokens at pooling `factor`."""
        return math.ceil(n_tokens / factor)

    def task(self, name: str) -> torch.Tensor:
        """The learned embedding [D] of task `name` ("cont" or "rec")."""
        return self.cont if name == "cont" else self.rec

    def _attend(self, attn, x_q, x_kv, pos_q, pos_kv, allowed):
        """Attention of queries from x_q [B, Lq, D] over keys and values from
        x_kv [B, Lk, D]; allowed [B, Lq or 1, Lk] is False where a query may
        not look (padding, and the future when causal)."""
        B, Lq, _ = x_q.shape
        Lk = x_kv.shape[1]
        q = attn.q_proj(x_q).view(B, Lq, self.heads, self.head_dim).transpose(1, 2)  # [B, H, Lq, hd]
        k = attn.k_proj(x_kv).view(B, Lk, self.kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, Lk, hd]
        v = attn.v_proj(x_kv).view(B, Lk, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q, pos_q, self.inv_freq), rotate(k, pos_kv, self.inv_freq)
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)  # [B, H, Lk, hd]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])  # [B, H, Lq, hd]
        return attn.o_proj(out.transpose(1, 2).reshape(B, Lq, self.heads * self.head_dim))

    def rows(self, segments: list[list[int]], factors: tuple[int, ...] | None = None,
             min_width: int | None = None) -> dict[int, list[torch.Tensor]]:
        """For each pooling factor x: the rows [ceil(n_i / x), D] of each
        segment (token ids), all segments in one forward pass.

        Every segment is padded to the same width (at least `min_width`
        tokens, by default segment_tokens), so its rows do not depend on which
        other segments share its batch (beyond float32 rounding on CPUs whose
        matmul threads split the work by batch size)."""
        factors = factors or self.config.factors
        step = math.lcm(*factors)
        width = max([min_width or self.config.segment_tokens] + [len(s) for s in segments])
        width = -(-width // step) * step
        ids, mask = pad_right(segments, self.pad_id, width=width)  # [B, W] each
        device = self.proj_in.weight.device
        ids, keys = ids.to(device), mask.to(device).bool()
        B, W = ids.shape
        pos = torch.arange(W, device=device).expand(B, W)  # [B, W]

        def allowed(last_q: torch.Tensor) -> torch.Tensor:
            """[B, Lq or 1, W]: what queries whose last visible position is
            last_q [B, Lq] may see (bidirectional: every real token)."""
            if not self.config.causal:
                return keys[:, None, :]  # [B, 1, W], broadcast over queries
            return keys[:, None, :] & (pos[:, None, :] <= last_q[:, :, None])  # [B, Lq, W]

        self.set_lora(True)
        try:
            h = e = self.embed(ids)  # [B, W, D]
            for block in self.blocks[:-1]:
                x = block.input_layernorm(h)
                h = h + self._attend(block.self_attn, x, x, pos, pos, allowed(pos))
                h = h + block.mlp(block.post_attention_layernorm(h))
            # The last block: queries are the residual stream averaged over
            # groups of x tokens (padding left out), at the group's mean
            # position; keys and values are every token (causal: every token
            # up to the group's last).
            last = self.blocks[-1]
            x = last.input_layernorm(h)
            out = {}
            for f in factors:
                G = W // f
                w = keys.view(B, G, f, 1).to(h.dtype)  # [B, G, f, 1]
                count = w.sum(2).clamp(min=1)  # [B, G, 1]
                hp = (h.view(B, G, f, -1) * w).sum(2) / count  # [B, G, D]
                pos_q = (pos.view(B, G, f) * w[..., 0]).sum(-1) / count[..., 0]  # [B, G]
                group_end = pos.view(B, G, f)[..., -1]  # [B, G]
                hp = hp + self._attend(last.self_attn, last.input_layernorm(hp), x, pos_q, pos, allowed(group_end))
                hp = hp + last.mlp(last.post_attention_layernorm(hp))
                r = self.proj_out(self.proj_in(self.decoder.model.norm(hp)))  # [B, G, D]
                if self.config.start == "mean":
                    mean = (e.view(B, G, f, -1) * w).sum(2) / count  # [B, G, D]
                    r = r + mean * self.embed_rms / mean.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-6)
                out[f] = [r[i, : self.n_rows(len(s), f)] for i, s in enumerate(segments)]
        finally:
            self.set_lora(False)
        return out

    # -- trained weights: LoRA, projector, task embeddings ----------------------

    def trained_state(self) -> dict[str, torch.Tensor]:
        state = {"proj_in.weight": self.proj_in.weight, "proj_out.weight": self.proj_out.weight,
                 "task.cont": self.cont, "task.rec": self.rec}
        for i, lora in enumerate(self.loras):
            state[f"lora.{i}.A"] = lora.A
            state[f"lora.{i}.B"] = lora.B
        if not self.config.rank:
            state.update({f"block.{name}": p for name, p in self.blocks.named_parameters()})
        return state

    def trainable(self) -> list[nn.Parameter]:
        return list(self.trained_state().values())

    def save(self, path: str | Path, metadata: dict[str, str]) -> None:
        save_trained(self.trained_state(), path, {"config": self.config.to_json(), **metadata})

    def load(self, path: str | Path) -> None:
        load_trained(self.trained_state(), path, "arc LoRA + projector")


def load_model(decoder_dir: str | Path, weights: str | Path | None = DEFAULT_WEIGHTS,
               dtype: str = "float32", device: str = "cpu", config: ArcConfig | None = None,
               fold: bool = False):
    """(ArcModel, tokenizer) for the decoder checkpoint in `decoder_dir`, with
    the trained weights from `weights` (their config with them), or untrained
    with `config` (default ArcConfig()) when weights is None. `fold`: LoRA
    folded in, for serving (lora.load_on_decoder)."""
    return load_on_decoder(ArcModel, ArcConfig, decoder_dir, weights, dtype, device, config, fold)

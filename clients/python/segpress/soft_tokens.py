"""Soft tokens into a decoder: Hugging Face `inputs_embeds` and vLLM `prompt_embeds`.

A soft-token response (compressor "complm") holds concept embeddings: rows
in the input-embedding space of one decoder (`Tensor.decoder_id`). The
decoder reads them where the context's token embeddings would be:

    [embeddings of the prompt before {context}] + CEs + [embeddings of the rest]

`inputs_embeds` builds that sequence for a Hugging Face model (through its
chat template by default, so the special tokens such as the BOS are the ones
the model expects), `generate` answers from it, and `vllm_prompt_embeds`
encodes a whole prompt's embeddings the way vLLM's `prompt_embeds` takes them.
They take a Tensor: `resp.tensor` for all of a response's contexts, or
`segpress.tensors.context_tensor(resp, i)` for context i alone.
torch (and transformers) are needed only by these functions, imported when
they run.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

import numpy as np

from .tensors import to_torch
from .v1 import segpress_pb2 as pb

if TYPE_CHECKING:
    import torch

_MARK = "\u2063segpress-context\u2063"  # stands in for the CEs while the template is applied


def inputs_embeds(tensor: pb.Tensor, model: Any, tokenizer: Any, prompt: str = "{context}",
                  *, chat: bool = True) -> torch.Tensor:
    """[1, length, hidden] input embeddings for `model`: `prompt` with the
    soft tokens of `tensor` where it says "{context}".

    With `chat`, `prompt` is the user message of the tokenizer's chat
    template (with the generation prompt after it); without, it is plain
    text after the tokenizer's BOS token (if it has one). Text is embedded
    with the model's own input embeddings; the soft tokens are cast to their
    dtype and device."""
    import torch

    if prompt.count("{context}") != 1:
        raise ValueError("prompt must contain {context} exactly once")
    table = model.get_input_embeddings()
    ces = to_torch(tensor)
    if ces.ndim != 2 or ces.shape[1] != table.embedding_dim:
        raise ValueError(f"soft tokens of shape {list(ces.shape)} do not fit this model's "
                         f"{table.embedding_dim}-wide input embeddings (they are for decoder "
                         f"{tensor.decoder_id or 'unknown'!r})")
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt.replace("{context}", _MARK)}],
            tokenize=False, add_generation_prompt=True)
    else:
        text = (tokenizer.bos_token or "") + prompt.replace("{context}", _MARK)
    before, after = text.split(_MARK)

    def embed(s: str) -> torch.Tensor:
        ids = tokenizer(s, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        return table(ids.to(table.weight.device))

    with torch.no_grad():
        parts = [embed(before), ces.to(device=table.weight.device, dtype=table.weight.dtype), embed(after)]
        return torch.cat(parts)[None]


def generate(tensor: pb.Tensor, model: Any, tokenizer: Any, prompt: str = "{context}", *,
             chat: bool = True, max_new_tokens: int = 32, **kwargs: Any) -> str:
    """The model's answer to `prompt` with the soft tokens as its context
    (greedy unless `kwargs` say otherwise), decoded without special tokens."""
    import torch

    embeds = inputs_embeds(tensor, model, tokenizer, prompt, chat=chat)
    kwargs.setdefault("do_sample", False)
    kwargs.setdefault("pad_token_id", tokenizer.eos_token_id)
    with torch.no_grad():
        out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                                                              device=embeds.device),
                             max_new_tokens=max_new_tokens, **kwargs)
    # With only inputs_embeds, generate returns the new tokens alone.
    return str(tokenizer.decode(out[0], skip_special_tokens=True)).strip()


def vllm_prompt_embeds(embeds: pb.Tensor | torch.Tensor | np.ndarray) -> str:
    """base64 of `torch.save` of a [length, hidden] tensor: the form of
    vLLM's `prompt_embeds` (OpenAI-compatible completions API, started with
    --enable-prompt-embeds). vLLM reads the whole prompt from it, so pass the
    embeddings of the whole prompt, e.g. `inputs_embeds(...)[0]`, not the
    bare soft tokens (unless they are the whole prompt)."""
    import torch

    if isinstance(embeds, pb.Tensor):
        t = to_torch(embeds)
    elif isinstance(embeds, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(embeds))
    else:
        t = embeds.detach()
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"prompt embeddings must be [length, hidden], got {list(t.shape)}")
    buf = io.BytesIO()
    torch.save(t.cpu().contiguous(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")

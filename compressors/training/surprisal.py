"""The teacher: a decoder LM's self-information of every word.

surprisal(token) = -log p(token | the text before it), in nats, from
SmolLM2-135M-Instruct. A word's surprisal is the sum over the decoder tokens
that end inside it: how much information the word adds given everything
before it, which is the signal LLMLingua (Jiang et al. 2023) drops tokens by.
Predictable words (function words, the rest of a phrase once it has begun,
things said before) score low; names, numbers and new ideas score high.

Long documents are read in overlapping windows: each window scores `stride`
new tokens and sees up to `window - stride` tokens before them, so every
token after the first window has at least that much left context.
"""

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..engines import resolve_dtype


class Surprisal:
    def __init__(self, model_dir: str, dtype: str = "auto", window: int = 512, stride: int = 384):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.dtype = resolve_dtype(dtype)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, self.dtype)).eval()
        self.window, self.stride = window, stride
        # Documents start after <|endoftext|>, as in the decoder's pre-training.
        self.start_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")

    @torch.inference_mode()
    def tokens(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Decoder token spans [n, 2] (character offsets) and surprisals [n]."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        seq = [self.start_id] + enc["input_ids"]  # seq[i + 1] is token i
        n = len(enc["input_ids"])
        out = np.zeros(n, dtype=np.float32)
        context = self.window - self.stride
        for lo in range(1, n + 1, self.stride):  # targets seq[lo:hi]
            hi = min(lo + self.stride, n + 1)
            s = max(0, lo - 1 - context)
            logits = self.model(torch.tensor([seq[s:hi]])).logits[0].float()  # [hi - s, vocab]
            logp = logits[lo - s - 1 : hi - s - 1].log_softmax(-1)  # predicts seq[lo:hi]
            target = torch.tensor(seq[lo:hi])
            out[lo - 1 : hi - 1] = -logp.gather(1, target[:, None])[:, 0].numpy()
        return np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(n, 2), out

    def words(self, text: str, spans: np.ndarray) -> np.ndarray:
        """Surprisal of each word [w] given word character spans [w, 2] (sorted):
        the sum over decoder tokens whose last non-space character is inside
        the word. A word no token ends in gets 0."""
        offsets, surprisal = self.tokens(text)
        return word_sums(text, offsets, surprisal, spans)


def word_sums(text: str, offsets: np.ndarray, values: np.ndarray, spans: np.ndarray) -> np.ndarray:
    out = np.zeros(len(spans), dtype=np.float64)
    if len(spans) == 0:
        return out
    for (s, e), v in zip(offsets, values):
        last = e - 1
        while last >= s and text[last].isspace():
            last -= 1
        if last < s:
            continue  # a whitespace-only token
        w = np.searchsorted(spans[:, 0], last, side="right") - 1
        if w >= 0 and last < spans[w, 1]:
            out[w] += v
    return out

"""The reader: a decoder LLM answers the question from a (compressed) context.

One fixed prompt, greedy decoding, at most `max_new_tokens` tokens. An
answer is correct when the expected answer string appears in it (case and
punctuation aside), the usual scoring for short-answer QA with small models
that like to answer in a full sentence.
"""

import re

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from compressors.engines import resolve_dtype

PROMPT = ("Answer the question using the text below. Reply with the answer only.\n\n"
          "Text:\n{context}\n\nQuestion: {question}")


class Reader:
    def __init__(self, model_dir: str, dtype: str = "auto", max_new_tokens: int = 16):
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.dtype = resolve_dtype(dtype)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, self.dtype)).eval()
        self.max_new_tokens = max_new_tokens

    def count(self, text: str) -> int:
        """Tokens of `text` in the reader's tokenizer: the unit of every ratio."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def answer(self, context: str, question: str) -> str:
        messages = [{"role": "user", "content": PROMPT.format(context=context, question=question)}]
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        out = self.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
            do_sample=False, pad_token_id=self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def contains(text: str, answer: str) -> bool:
    """`answer` occurs in `text` as whole words, ignoring case and punctuation."""
    return f" {normalize(answer)} " in f" {normalize(text)} "

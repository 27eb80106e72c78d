"""Compression methods, side by side at the same rate.

A method has a name and two steps:
  prepare(example) -> state       rate-independent work (a model pass), once per example
  compress(example, state, rate) -> the context text the reader gets
Both are timed; a method's compression time at a rate is the sum.

Budgets are in reader tokens: segpress's methods keep at most round(rate x
the context's reader tokens). The word-dropping baselines count each word's
tokens on its own, and the words they join can tokenize a little longer
(on multidoc, about 0.36 at rate 0.33): a small edge for them. The reference
package's methods get the same rate but count tiktoken tokens and apply their
own budget rules. The achieved ratio is reported for every method.

Adding a method is a class with these two functions and a line in METHODS.
Each builder gets the shared `Env` (models directory, the reader, the
checkpoint to use) and builds its models once.
"""

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compressors.base import ContextParts
from compressors.llmlingua2 import Params, context_words

from .reader import Reader


@dataclass
class Env:
    models_dir: Path
    reader: Reader
    reader_dir: str       # the decoder checkpoint (also the LLMLingua-1 scoring LM)
    llmlingua2_dir: str   # the llmlingua2 checkpoint (segpress and the reference's LLMLingua-2)
    seed: int = 0
    _llmlingua2: object = field(default=None, repr=False)

    def llmlingua2(self):
        """segpress's llmlingua2 compressor on llmlingua2_dir (float32), loaded
        once for every method that uses it."""
        if self._llmlingua2 is None:
            from compressors.llmlingua2 import LLMLingua2

            self._llmlingua2 = LLMLingua2(self.llmlingua2_dir, dtype="float32")
        return self._llmlingua2


class NoCompression:
    """The whole context; evaluated once, at rate 1."""
    name = "none"

    def __init__(self, env):
        pass

    def prepare(self, ex):
        return None

    def compress(self, ex, state, rate):
        return ex.context


class _WordBudget:
    """Baselines that keep whole words while their tokens fit round(rate *
    tokens), each word counted on its own with the reader's tokenizer (with
    its leading space)."""

    def __init__(self, env):
        self.reader = env.reader
        self.seed = env.seed

    def prepare(self, ex):
        words = [p.split(" ") for p in ex.passages]  # keeps "\n" inside words
        cost = [[self.reader.count(" " + w) for w in ws] for ws in words]
        return words, cost

    def compress(self, ex, state, rate):
        words, cost = state
        flat = [(i, j) for i, ws in enumerate(words) for j in range(len(ws))]
        budget = round(rate * self.reader.count(ex.context))
        keep, used = set(), 0
        for i, j in self.order(ex, flat):
            if used + cost[i][j] <= budget:
                keep.add((i, j))
                used += cost[i][j]
        return "\n\n".join(" ".join(w for j, w in enumerate(ws) if (i, j) in keep)
                           for i, ws in enumerate(words)).strip()


class RandomDrop(_WordBudget):
    """Keeps words in random order (seeded per example) while they fit."""
    name = "random"

    def order(self, ex, flat):
        rng = random.Random(f"{self.seed}-{ex.id}")
        return rng.sample(flat, len(flat))


class Truncate(_WordBudget):
    """Keeps the first words while they fit."""
    name = "truncate"

    def order(self, ex, flat):
        return flat


def within_budget(render, rate: float, reader, original_tokens: int) -> str:
    """render(rate) for the largest rate (at most `rate`) whose output fits
    round(rate * original_tokens) reader tokens. Methods that count tokens
    with another tokenizer would otherwise get a different budget than the
    baselines; this puts them on the reader's (the render is cheap)."""
    budget = round(rate * original_tokens)
    r = rate
    for _ in range(8):
        text = render(r)
        n = reader.count(text)
        if n <= budget:
            break
        r *= 0.99 * budget / n
    return text


class Segpress:
    """segpress's llmlingua2 compressor with the given checkpoint (the trained
    default unless --llmlingua2-model says otherwise); one context per
    passage; the budget in reader tokens (within_budget)."""
    name = "segpress-llmlingua2"
    granularity = "word"

    def __init__(self, env):
        self.comp = env.llmlingua2()
        self.reader = env.reader

    def prepare(self, ex):
        parts = []
        for p in ex.passages:
            segs = self.comp.segment(p)
            parts.append(ContextParts(p, segs, self.comp.encode([s.text for s in segs])))
        return parts

    def compress(self, ex, parts, rate):
        def render(r):
            params = Params(rate=r, granularity=self.granularity)
            return "\n\n".join(x.text for x in self.comp.render(parts, params))
        return within_budget(render, rate, self.reader, self.reader.count(ex.context))


class SegpressSentences(Segpress):
    """The same, keeping whole sentences (llmlingua2.granularity = sentence)."""
    name = "segpress-llmlingua2-sentences"
    granularity = "sentence"


class Teacher(Segpress):
    """The training teacher as a compressor: SmolLM2 surprisal per word
    (words as llmlingua2 splits them) in place of the classifier's scores,
    the same selection and output as segpress. What the student imitates."""
    name = "teacher-surprisal"

    def __init__(self, env):
        from compressors.training.surprisal import Surprisal

        super().__init__(env)
        self.teacher = Surprisal(env.reader_dir)

    def prepare(self, ex):
        parts = super().prepare(ex)
        for part in parts:
            spans = context_words(part)["spans"].astype(np.int64)
            surprisal = self.teacher.words(part.text, spans)  # [words of all segments]
            ends = np.cumsum([len(e["scores"]) for e in part.encoded])
            for e, scores in zip(part.encoded, np.split(surprisal, ends[:-1])):
                e["scores"] = scores.astype(np.float32)
        return parts


class ReferenceLLMLingua:
    """The `llmlingua` package's LLMLingua-1 path (iterative token-level
    perplexity filter plus its context-level filter), SmolLM2 as its scoring
    LM, no question (query-agnostic like the others)."""
    name = "llmlingua1-ref"

    def __init__(self, env):
        from .reference import reference_llmlingua1

        self.ref = reference_llmlingua1(env.reader_dir, env.reader.dtype)

    def prepare(self, ex):
        return None

    def compress(self, ex, state, rate):
        return self.ref.compress_prompt(list(ex.passages), rate=rate)["compressed_prompt"]


class ReferenceLLMLingua2:
    """The `llmlingua` package's LLMLingua-2 path on the same checkpoint as
    segpress (its per-window percentile rule; it lowercases with an uncased
    tokenizer)."""
    name = "llmlingua2-ref"

    def __init__(self, env):
        from .reference import reference_compressor

        self.ref = reference_compressor(env.llmlingua2_dir)

    def prepare(self, ex):
        return None

    def compress(self, ex, state, rate):
        out = self.ref.compress_prompt_llmlingua2(list(ex.passages), rate=rate)
        return out["compressed_prompt"]


METHODS = {m.name: m for m in [
    NoCompression, RandomDrop, Truncate, ReferenceLLMLingua, ReferenceLLMLingua2, Teacher, Segpress,
    SegpressSentences,
]}

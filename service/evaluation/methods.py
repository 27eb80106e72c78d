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

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compressors.base import ContextParts
from compressors.keep import context_words
from compressors.llmlingua2 import Params

from .reader import Reader


@dataclass
class Env:
    models_dir: Path
    reader: Reader
    reader_dir: str       # the decoder checkpoint (also the LLMLingua-1 scoring LM)
    llmlingua2_dir: str   # the llmlingua2 checkpoint (segpress and the reference's LLMLingua-2)
    seed: int = 0
    config: object = None  # service.config.Config: the sentence embedder as served (default Config())
    _llmlingua2: dict = field(default_factory=dict, repr=False)
    _selector: object = field(default=None, repr=False)

    def llmlingua2(self, engine: str = "torch"):
        """segpress's llmlingua2 compressor on llmlingua2_dir (torch: float32;
        another engine in its default precision), loaded once per engine for
        every method that uses it."""
        if engine not in self._llmlingua2:
            from compressors.llmlingua2 import LLMLingua2

            dtype = "float32" if engine == "torch" else "auto"
            self._llmlingua2[engine] = LLMLingua2(self.llmlingua2_dir, dtype=dtype, engine=engine)
        return self._llmlingua2[engine]

    def selector(self, classifier):
        """Query-aware selection's sentence vectors as the server makes them
        (--sentence-vectors, --sentence-engine etc.), pooled from
        `classifier`'s pass by default, loaded once."""
        if self._selector is None:
            from ..config import Config
            from ..assemble import sentence_vectors

            self._selector = sentence_vectors(self.config or Config(), {"llmlingua2": classifier})
        return self._selector


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
    engine = "torch"

    def __init__(self, env):
        self.comp = env.llmlingua2(self.engine)
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


class SegpressOpenVINOInt8(Segpress):
    """The same on --engine openvino-int8 (static int8 on OpenVINO)."""
    name = "segpress-llmlingua2-openvino-int8"
    engine = "openvino-int8"


class SegpressSentences(Segpress):
    """The same, keeping whole sentences (llmlingua2.granularity = sentence)."""
    name = "segpress-llmlingua2-sentences"
    granularity = "sentence"


class SegpressSentenceThenWord(Segpress):
    """The same, coarse to fine: whole sentences first, then words inside them
    (llmlingua2.granularity = sentence_then_word)."""
    name = "segpress-llmlingua2-sentence-then-word"
    granularity = "sentence_then_word"


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


class SegpressQuery(Segpress):
    """segpress with the question: query-aware selection (compressors/relevance.py)
    in front of the llmlingua2 fine stage, as the server runs it for a request
    with a query; one context per passage. `gold_rank` reports where the
    ranker put the passage that answers (multidoc tasks)."""
    name = "segpress-query"
    ranker = "hybrid"
    order = None          # None: Options' default
    min_relevance = None  # None: Options' default

    def __init__(self, env):
        super().__init__(env)
        self.selector = env.selector(self.comp)

    def prepare(self, ex):
        parts = super().prepare(ex)
        vectors = [self.selector.encode([s.text for s in p.segments]) for p in parts]
        return parts, vectors, self.selector.query(ex.question)

    def choices(self, ex, state, budget):
        from compressors.relevance import Options, choose

        parts, vectors, q = state
        options = Options(ranker=self.ranker)
        if self.order is not None:
            options = dataclasses.replace(options, order=self.order)
        if self.min_relevance is not None:
            options = dataclasses.replace(options, min_relevance=self.min_relevance)
        self.options = options
        return choose(parts, vectors, ex.question, q, budget, options)

    def compress(self, ex, state, rate):
        parts = state[0]
        total = sum(s.n_tokens for p in parts for s in p.segments)

        def render(r):
            params = Params(rate=r, granularity=self.granularity)
            chosen = self.choices(ex, state, self.comp.budget(params, total))
            selected = [dataclasses.replace(p, allowed=c.allowed, budget=c.budget)
                        for p, c in zip(parts, chosen)]
            texts = [(c.rank if self.options.order == "relevance" else i, x.text)
                     for i, (x, c) in enumerate(zip(self.comp.render(selected, params), chosen))
                     if c.kept]
            return "\n\n".join(t for _, t in sorted(texts))
        return within_budget(render, rate, self.reader, self.reader.count(ex.context))

    def gold_rank(self, ex, state) -> int | None:
        if "gold" not in ex.meta:
            return None
        return self.choices(ex, state, None)[ex.meta["gold"]].rank


class SegpressQuerySentences(SegpressQuery):
    """The same, the fine stage keeping whole sentences."""
    name = "segpress-query-sentences"
    granularity = "sentence"


class SegpressQueryDense(SegpressQuery):
    """Ablation: sentence embeddings alone rank."""
    name = "segpress-query-dense"
    ranker = "dense"


class SegpressQueryBM25(SegpressQuery):
    """Ablation: BM25 alone ranks."""
    name = "segpress-query-bm25"
    ranker = "bm25"


class ReferenceLongLLMLingua:
    """The peer to beat: the `llmlingua` package's LongLLMLingua path with the
    question (question-aware coarse ranking of the passages by SmolLM2, its
    LM here, dynamic per-passage rates, question-aware token pruning)."""
    name = "longllmlingua-ref"

    def __init__(self, env):
        from .reference import reference_llmlingua1

        self.ref = reference_llmlingua1(env.reader_dir, env.reader.dtype)

    def prepare(self, ex):
        return None

    def compress(self, ex, state, rate):
        out = self.ref.compress_prompt(
            list(ex.passages), question=ex.question, rate=rate, rank_method="longllmlingua",
            condition_in_question="after_condition", reorder_context="sort",
            dynamic_context_compression_ratio=0.3, condition_compare=True,
            context_budget="+100", use_sentence_level_filter=False)
        return out["compressed_prompt"]


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
    SegpressOpenVINOInt8, SegpressSentences, SegpressSentenceThenWord, SegpressQuery, SegpressQuerySentences,
    SegpressQueryDense, SegpressQueryBM25, ReferenceLongLLMLingua,
]}

"""The compressor contract: what the service relies on, as code.

A compressor works in three steps:

  segment(text)            -> list[Segment]   deterministic, cheap
  encode(segment_texts)    -> list[Encoded]   the model forward pass: expensive,
                                              query- and rate-independent, cached
  render(contexts, params) -> list[Rendered]  cheap, per request

Only `encode` results are cached (under a key made of the namespace, the
compressor's `name`, its `cache_id` and the segment text), so nothing a request
asks for (rate, query, budget) may influence them.

A request's parameters reach a compressor as its own `Params` object, built by
`Params.from_proto(request)` and checked by `Params.check()` (what needs no
model) and `Compressor.check_params(params)` (what does). Both raise
InvalidParams with a message that names the field.

The service never names a compressor: compressors are registered in
compressors/registry.py, and everything the pipeline needs is below.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from segpress.v1 import segpress_pb2 as pb

# What a compressor returns: text, or soft tokens (a [rows, hidden] tensor).
Output = Literal["text", "tensor"]

# One segment's cached value: named arrays (cache/codec.py stores them).
Encoded = dict[str, np.ndarray]


class Kind(enum.IntEnum):
    """What a cached value's arrays mean; stored in the value's header, so a
    value of another kind read under the same key is a miss, never misread."""

    WORD_SCORES = 1  # llmlingua2: per-word spans, keep scores, token counts
    SOFT_TOKENS = 2  # soft compressors: one [rows, hidden] tensor
    SENTENCE_VECTORS = 3  # query-aware selection: sentence spans and their embeddings


@dataclass(frozen=True)
class Segment:
    """A piece of one context: context[start:end] == text."""

    start: int
    end: int
    text: str
    n_tokens: int


@dataclass
class ContextParts:
    """One context with its segments and their encoded values, for render.

    When query-aware selection ran, `allowed` holds the character ranges of
    the context that may be kept (sorted, not overlapping; empty: nothing)
    and `budget` the tokens the context may keep; render honours both. None:
    no selection, the whole context and the request's own budget."""

    text: str
    segments: list[Segment]
    encoded: list[Encoded]
    allowed: list[tuple[int, int]] | None = None
    budget: int | None = None


@dataclass
class Rendered:
    """The compressed form of one context."""

    original_tokens: int
    compressed_tokens: int
    text: str = ""
    tensor: np.ndarray | None = None  # [rows, hidden], soft compressors
    segment_rows: list[int] = field(default_factory=list)  # rows per segment


class InvalidParams(ValueError):
    """A request parameter is out of range; the message names the field."""


class Params(Protocol):
    """A compressor's request parameters."""

    @classmethod
    def from_proto(cls, req: pb.CompressRequest) -> Params:
        """The parameters of `req` (its oneof case for this compressor, or
        the defaults when the request sets none). Values the proto cannot
        name (an unknown enum number) are kept as text for check() to refuse."""
        ...

    def check(self) -> None:
        """Raises InvalidParams for values out of range (no model needed)."""
        ...


@runtime_checkable
class Compressor(Protocol):
    """What the pipeline, the server and `segpress batch` use of a compressor."""

    name: ClassVar[str]        # registry name, also the proto oneof case of its params
    output: ClassVar[Output]   # "text" or "tensor"
    kind: ClassVar[Kind]       # what its cached values hold
    Params: ClassVar[type]     # its Params class (see the Params protocol)

    model_id: str              # a readable model name, reported in responses and Info
    fingerprint: str           # sha256 of the weights
    cache_id: str              # what cache keys name: fingerprint + precision (+ engine)
    dtype: str                 # the precision the model runs in (float32, bfloat16, int8)
    max_segment_tokens: int    # segments are cut to at most this many tokens
    # Request limits of this compressor, reported in InfoResponse.limits
    # (field name -> value), e.g. {"max_force_tokens": 100}.
    limits: ClassVar[dict[str, int]]

    def check_params(self, params) -> None:
        """Raises InvalidParams for parameters this model cannot serve."""
        ...

    def variant(self, params) -> "Compressor":
        """The compressor that serves `params` (already checked): itself,
        unless a parameter changes what is cached (a soft compressor's
        refine_steps), in which case one with its own cache_id."""
        ...

    def budget(self, params, total_tokens: int) -> int | None:
        """Tokens the request keeps of `total_tokens` (all its contexts), or
        None when the compressor has no budget (a fixed rate): what the
        query-aware selection sizes its coarse stage by."""
        ...

    def segment(self, text: str) -> list[Segment]: ...

    def encode(self, texts: list[str]) -> list[Encoded]: ...

    def render(self, contexts: list[ContextParts], params, query: str | None = None
               ) -> list[Rendered]: ...

    def count_tokens(self, text: str, stop_after: int) -> int:
        """The tokens segment(text) counts (the sum of its n_tokens) when that
        is at most `stop_after`, else any number above `stop_after`, found
        in time and memory that grow with `stop_after`, not with the text
        (the pipeline refuses a request over max_request_tokens with it
        before segmenting). A segment's n_tokens must never be more than the
        UTF-8 bytes of its text: the pipeline counts only requests with more
        bytes than the limit."""
        ...

    def check_encoded(self, encoded: Encoded, segment: Segment) -> bool:
        """Whether a cached value (decoded, checksum valid) can be the value
        of `segment`: the arrays, shapes and dtypes encode makes, values in
        range. The pipeline treats a value that fails as a miss: computed
        again and overwritten, never an error and never wrong output."""
        ...


@runtime_checkable
class SoftCompressor(Compressor, Protocol):
    """A compressor whose output is soft tokens for one decoder. Its Params
    have `output_dtype` ("float32", "float16" or "bfloat16"): the element
    type of the response tensor; render returns float32 rows."""

    decoder_id: str            # the decoder that reads the rows
    decoder_fingerprint: str   # sha256 of that decoder's weights
    hidden_size: int           # the decoder's input-embedding width (columns)
    pooling_factors: tuple[int, ...]  # factors a request may pick (Info lists them); () if none
    refine_steps: int          # steps its rows are refined (a variant's; 0: none)

    def rows(self, segment: Segment, params) -> int:
        """The rows render gives `segment` with `params` (without a context's
        closing task row), known from its tokens before anything is encoded."""

    def end_rows(self) -> int:
        """Rows a context with segments ends with (a <Cont> row: 1; else 0)."""


# -- shared by the compressors ----------------------------------------------------


def pad_right(seqs: list[list[int]], pad_id: int, width: int = 0, multiple: int = 1):
    """Token-id lists as one right-padded batch: input_ids and attention_mask,
    both [len(seqs), max(width, longest rounded up to `multiple`)] (torch.long;
    mask 1 on real tokens)."""
    import torch

    width = max(width, padded_width(max((len(s) for s in seqs), default=0), multiple))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def padded_width(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple`."""
    return -(-length // multiple) * multiple


def length_sorted_batches(lengths: list[int], batch_size: int,
                          multiple: int = 1) -> Iterator[list[int]]:
    """Indices of the inputs in batches of at most `batch_size`, shortest
    first, so each padded forward pass wastes little on padding.

    Each batch holds inputs of one padded width (length rounded up to
    `multiple`). Padding changes a model's outputs in the last digits (in
    bfloat16 by ~3e-3), so this keeps an input's outputs independent of what
    else was encoded with it: a segment scores the same whether it came in
    alone, with other segments, or after a cache eviction."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or padded_width(lengths[i], multiple)
                      != padded_width(lengths[batch[0]], multiple)):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def overlaps(seg: Segment, allowed: list[tuple[int, int]] | None) -> bool:
    """Whether any of the segment's characters may be kept."""
    return allowed is None or any(s < seg.end and seg.start < e for s, e in allowed)


def check_word_scores(encoded: Encoded, segment: Segment) -> bool:
    """Whether `encoded` is a well-formed Kind.WORD_SCORES value for
    `segment`: exactly spans [n, 2], scores [n] and tokens [n]; integer spans
    inside the segment's text, non-empty, increasing and not overlapping;
    finite scores in [0, 1]; integer token counts of at least 1."""
    try:
        if set(encoded) != {"spans", "scores", "tokens"}:
            return False
        spans, scores, tokens = encoded["spans"], encoded["scores"], encoded["tokens"]
        n = len(scores)
        if (spans.shape != (n, 2) or scores.shape != (n,) or tokens.shape != (n,)
                or spans.dtype.kind not in "iu" or tokens.dtype.kind not in "iu"
                or scores.dtype.kind != "f"):
            return False
        if n == 0:
            return True
        starts, ends = spans[:, 0].astype(np.int64), spans[:, 1].astype(np.int64)
        return bool(starts[0] >= 0 and ends[-1] <= len(segment.text)
                    and (starts < ends).all() and (ends[:-1] <= starts[1:]).all()
                    and np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
                    and (tokens >= 1).all())
    except (AttributeError, TypeError, ValueError, IndexError):
        return False

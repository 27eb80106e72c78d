"""What every compressor provides, and the errors it raises.

A compressor works in three steps:

  segment(text)            -> list[Segment]        deterministic, cheap
  encode(segment_texts)    -> list[dict of arrays]  the model forward pass:
                                                    expensive, query- and
                                                    rate-independent, cached
  render(contexts, params) -> list[Rendered]        cheap, per request

and check_params(params), which raises InvalidParams for parameters this
model cannot serve (Params.check covers those that need no model).

Only `encode` results are cached, so nothing a request asks for (rate, query,
budget) may influence them.
"""

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Segment:
    """A piece of one context: context[start:end] == text."""

    start: int
    end: int
    text: str
    n_tokens: int


@dataclass
class ContextParts:
    """One context with its segments and their encoded values, for render."""

    text: str
    segments: list[Segment]
    encoded: list[dict[str, np.ndarray]]


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


def pad_right(seqs: list[list[int]], pad_id: int, width: int = 0):
    """Token-id lists as one right-padded batch: input_ids and attention_mask,
    both [len(seqs), max(width, longest)] (torch.long; mask 1 on real tokens)."""
    import torch

    width = max([width] + [len(s) for s in seqs])
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask

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

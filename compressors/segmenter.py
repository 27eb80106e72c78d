"""Cuts a context into segments that fit a model window.

Deterministic and tokenizer-aware: the text is tokenized once, and segments
are packed greedily from the start, each at most `max_tokens` tokens and
ending on a sentence boundary where one exists in the window (else on
whitespace, else mid-word). The same text always gives the same segments, so
a context that appears in two requests is cached once.

Segments never include the whitespace around them: `context[start:end]` is
the segment's text, and the gaps between segments are whitespace the
compressor can still see in the context.
"""

import re

from .base import Segment

# Text that ends a sentence, so a segment may end after it: . ! ? (or their
# full-width forms, or an ellipsis), optionally followed by closing quotes or
# brackets, at the end of the text before a cut. (SENTENCE_END below is the
# wider rule for finding sentences: it also ends one at a line break, where
# segments are cut anyway.)
_ENDS_SENTENCE = re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*$")
_CJK_STOP = ("\u3002", "\uff01", "\uff1f")  # 。！？ end a sentence without a space
# Where a sentence ends, for everything that works in sentences (llmlingua2's
# sentence granularity, query-aware selection): ., !, ? or an ellipsis (with
# closing quotes or brackets) before whitespace or the end of the text; a CJK
# full stop; a line break. Abbreviations ("Mr. Smith") end a sentence too:
# cheap, and a wrong cut only makes a sentence shorter.
SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)|[\u3002\uff01\uff1f]|\n")


def segment_text(text: str, tokenizer, max_tokens: int) -> list[Segment]:
    offsets = token_offsets(text, tokenizer)
    n = len(offsets)
    segments: list[Segment] = []
    i = 0
    while i < n:
        j = min(i + max_tokens, n)
        if j < n:
            j = _best_cut(text, offsets, i, j)
        start, end = offsets[i][0], offsets[j - 1][1]
        segments.append(Segment(start, end, text[start:end], j - i))
        i = j
    return segments


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text` (SENTENCE_END), without
    surrounding whitespace; empty sentences are left out."""
    spans, start = [], 0
    for end in [m.end() for m in SENTENCE_END.finditer(text)] + [len(text)]:
        s, e = start, end
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            spans.append((s, e))
        start = end
    return spans


def token_offsets(text: str, tokenizer) -> list[tuple[int, int]]:
    """Character spans of the tokens of `text`, without special tokens.

    Zero-width tokens are merged into the next token, so every span is
    non-empty and spans are increasing.
    """
    enc = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    spans: list[tuple[int, int]] = []
    pending = None
    for s, e in trim_spaces(text, enc["offset_mapping"]):
        if e <= s:
            pending = s if pending is None else pending
            continue
        if pending is not None:
            s, pending = min(s, pending), None
        spans.append((s, e))
    return spans


def trim_spaces(text: str, offsets) -> list[tuple[int, int]]:
    """Token spans without surrounding whitespace: SentencePiece tokenizers
    can include the space a "▁" stands for; a bare "▁" becomes empty."""
    out = []
    for s, e in offsets:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        out.append((s, e))
    return out


def _best_cut(text: str, offsets, i: int, j: int) -> int:
    """The token index to end the segment [i, cut) at, i < cut <= j."""
    word_cut = None
    for k in range(j, i, -1):  # cut between token k-1 and token k
        prev_end, next_start = offsets[k - 1][1], offsets[k][0]
        gap = text[prev_end:next_start]
        before = text[max(0, prev_end - 4) : prev_end]
        if ("\n" in gap) or (gap.strip() == "" and gap and _ENDS_SENTENCE.search(before)):
            return k
        if before.endswith(_CJK_STOP):
            return k
        if word_cut is None and gap and gap.isspace():
            word_cut = k
    return word_cut if word_cut is not None else j

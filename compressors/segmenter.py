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
import unicodedata

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


# Unknown words: a WordPiece (BERT) tokenizer gives a word it cannot spell
# one [UNK] token however long it is: Thai, or any run of more than 100
# characters without spaces or punctuation (a long number, a blob). With
# `unknown_pieces`, an unknown-word token longer than LONG_UNKNOWN characters
# counts, and can be kept, as pieces of about PIECE_CHARS characters, never
# cut before a combining mark; so such a run is not one token that a budget
# keeps whole or drops whole.
PIECE_CHARS = 8
LONG_UNKNOWN = 2 * PIECE_CHARS


def segment_text(text: str, tokenizer, max_tokens: int,
                 unknown_pieces: bool = False) -> list[Segment]:
    """Segments of `text`: pieces of it that never overlap, in order, and
    together hold every character of it that is not whitespace around
    segments.

    Tokens can share characters: an uncased WordPiece tokenizer splits a
    Hangul syllable into jamo tokens that all map to that syllable, and a
    byte-level BPE token can hold part of an emoji. A segment is only cut
    where no token reaches past the cut (`clean_cuts`), so no character is
    in two segments. Characters no token covers (a zero-width space, a byte
    order mark, a control character) belong to the segment next to them,
    so nothing between two words is lost."""
    offsets = token_offsets(text, tokenizer, unknown_pieces)
    n = len(offsets)
    clean = clean_cuts(offsets)
    segments: list[Segment] = []
    i, start = 0, len(text) - len(text.lstrip())
    while i < n:
        j = min(i + max_tokens, n)
        if j < n:
            j = _best_cut(text, offsets, clean, i, j)
        end = max(e for _, e in offsets[i:j])
        end, next_start = split_gap(text, end, offsets[j][0]) if j < n else (len(text.rstrip()), 0)
        segments.append(Segment(start, end, text[start:end], j - i))
        i, start = j, next_start
    return segments


def split_gap(text: str, a: int, b: int) -> tuple[int, int]:
    """Where the piece that ends at `a` ends and the piece that starts at `b`
    starts, so that characters no token covers (a zero-width space, a
    control character) between them belong to one of them: with no
    whitespace in text[a:b], all of it to the first; else, around the last
    whitespace run, what comes before it to the first and what comes after
    it to the second. Neither piece gains whitespace at its edge."""
    k = b
    while k > a and not text[k - 1].isspace():
        k -= 1
    if k == a:
        return b, b
    return a + len(text[a:k].rstrip()), k


def clean_cuts(offsets: list[tuple[int, int]]) -> list[bool]:
    """[len(offsets) + 1] bool: whether text may be cut before token k
    (k = 0 .. n), that is no token before k reaches past where token k
    starts (tokens of one Hangul syllable or of one emoji overlap)."""
    clean, reach = [True], 0
    for k in range(1, len(offsets)):
        reach = max(reach, offsets[k - 1][1])
        clean.append(reach <= offsets[k][0])
    return clean + [True]


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


def token_offsets(text: str, tokenizer, unknown_pieces: bool = False) -> list[tuple[int, int]]:
    """Character spans of the tokens of `text`, without special tokens.

    Zero-width tokens are merged into the next token, so every span is
    non-empty and spans start in order; tokens made from one character
    (jamo of a Hangul syllable, bytes of an emoji) have overlapping spans
    (see clean_cuts). With `unknown_pieces`, a long unknown-word token is
    several spans (unknown_word_pieces).
    """
    enc = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
    )
    unk = tokenizer.unk_token_id if unknown_pieces else None
    spans: list[tuple[int, int]] = []
    pending = None
    for (s, e), tid in zip(trim_spaces(text, enc["offset_mapping"]), enc["input_ids"]):
        if e <= s:
            pending = s if pending is None else pending
            continue
        pieces = unknown_word_pieces(text, s, e) if tid == unk else [(s, e)]
        if pending is not None:
            pieces[0], pending = (min(pieces[0][0], pending), pieces[0][1]), None
        spans += pieces
    return spans


def unknown_word_pieces(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The pieces an unknown-word token text[start:end] counts as: itself
    when it is at most LONG_UNKNOWN characters, else pieces of PIECE_CHARS
    characters, each cut moved past combining marks and joiners."""
    if end - start <= LONG_UNKNOWN:
        return [(start, end)]
    pieces = []
    while start < end:
        cut = min(start + PIECE_CHARS, end)
        while cut < end and _joins_previous(text, cut):
            cut += 1
        pieces.append((start, cut))
        start = cut
    return pieces


def _joins_previous(text: str, i: int) -> bool:
    """Whether text[i] belongs to the character before it (a combining mark,
    a variation selector, or the character after a zero-width joiner)."""
    c = text[i]
    return (unicodedata.category(c) in ("Mn", "Mc", "Me") or "\ufe00" <= c <= "\ufe0f"
            or c == "\u200d" or text[i - 1] == "\u200d")


# -- counting tokens before segmenting ------------------------------------------

# Bytes of the UTF-8 text mapped for visible_runs: ASCII whitespace stays,
# visible ASCII (! to ~) becomes "x", every other byte is deleted.
_RUN_TABLE = bytes(0x20 if b in b" \t\n\r" else 0x78 for b in range(256))
_RUN_DELETE = bytes(b for b in range(256) if b not in b" \t\n\r" and not 0x21 <= b <= 0x7E)


def visible_runs(text: str) -> int:
    """A cheap lower bound on the tokens of `text` (one pass in C, no
    tokenizer): the runs between ASCII spaces, tabs and line breaks that hold
    a visible ASCII character. Each such run is at least one token of its
    own for the tokenizers used here (WordPiece, SentencePiece and byte-level
    BPE all split at those spaces and never drop a visible ASCII character)."""
    runs = text.encode("utf-8", "surrogatepass").translate(_RUN_TABLE, _RUN_DELETE)
    return runs.count(b" x") + runs.startswith(b"x")


def count_tokens(text: str, tokenizer, stop_after: int, unknown_pieces: bool = False,
                 chunk_chars: int = 1 << 16) -> int:
    """The tokens segment_text counts in `text` (the sum of its segments'
    n_tokens) when that is at most `stop_after`; otherwise some number above
    `stop_after`, found without tokenizing the whole text: first the cheap
    lower bound (visible_runs), then the text tokenized in pieces of about
    `chunk_chars` characters until the count passes `stop_after`. Time and
    memory grow with `stop_after`, not with the text.

    Pieces end inside whitespace (before the last whitespace character of a
    run), where the tokenizers used here cut anyway, so the count is exact.
    Only where no whitespace is found within 4 * chunk_chars is a piece cut
    inside a word, which changes that word's tokens (by at most about one
    per character of its shorter side, and never more than 100 for a
    WordPiece word); CUT_SLACK tokens are taken off the count for each such
    cut, so it stays a lower bound and no request is refused for a cut."""
    n = visible_runs(text)
    if n > stop_after:
        return n
    n = start = 0
    while start < len(text):
        end, cut_in_word = _chunk_end(text, start, chunk_chars)
        n += len(token_offsets(text[start:end], tokenizer, unknown_pieces)) - CUT_SLACK * cut_in_word
        if n > stop_after:
            return n
        start = end
    return max(n, 0)


CUT_SLACK = 128  # tokens a cut inside a word is allowed to have added (count_tokens)


def _chunk_end(text: str, start: int, size: int) -> tuple[int, bool]:
    """Where a counting piece that starts at `start` ends, and whether it had
    to cut elsewhere than in whitespace: at the last _CUT before start + size,
    else at the first one after it (within 4 * size), else at 4 * size."""
    if start + size >= len(text):
        return len(text), False
    limit = start + size
    last = None
    for lo in (max(start + 1, limit - 4096), start + 1):
        for last in _CUT.finditer(text, lo, limit):
            pass
        if last is not None:
            return last.start(), False
    m = _CUT.search(text, limit, min(start + 4 * size, len(text)))
    if m is not None:
        return m.start(), False
    end = min(start + 4 * size, len(text))
    return end, end < len(text)


# An ASCII whitespace character that ends a whitespace run (the next one is
# not whitespace): a piece may end before it.
_CUT = re.compile(r"[ \t\n\r](?=\S)")


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


def _best_cut(text: str, offsets, clean: list[bool], i: int, j: int) -> int:
    """The token index to end the segment [i, cut) at: i < cut <= j, at a
    clean cut (see clean_cuts); past j only where there is none before it."""
    word_cut = mid_word = None
    for k in range(j, i, -1):  # cut between token k-1 and token k
        if not clean[k]:
            continue
        mid_word = k if mid_word is None else mid_word
        prev_end, next_start = offsets[k - 1][1], offsets[k][0]
        gap = text[prev_end:next_start]
        before = text[max(0, prev_end - 4) : prev_end]
        if ("\n" in gap) or (gap.strip() == "" and gap and _ENDS_SENTENCE.search(before)):
            return k
        if before.endswith(_CJK_STOP):
            return k
        if word_cut is None and gap and gap.isspace():
            word_cut = k
    if word_cut is not None or mid_word is not None:
        return word_cut if word_cut is not None else mid_word
    return next(k for k in range(j + 1, len(clean)) if clean[k])

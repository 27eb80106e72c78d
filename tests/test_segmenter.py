import re

import pytest

from compressors.segmenter import segment_text


@pytest.fixture(scope="module")
def tok(llmlingua2):
    return llmlingua2.tokenizer


def check_partition(text, segments, tok, max_tokens):
    prev_end = 0
    for s in segments:
        assert text[s.start:s.end] == s.text
        assert s.text == s.text.strip() and s.text
        gap = text[prev_end:s.start]
        assert gap.strip() == "" or not gap.isascii(), f"non-space gap {gap!r}"
        assert s.n_tokens <= max_tokens
        assert len(tok(s.text, add_special_tokens=False)["input_ids"]) <= max_tokens + 2
        prev_end = s.end
    assert text[prev_end:].strip() == ""


def test_short_text_is_one_segment(tok):
    segs = segment_text("One sentence. Two sentences.", tok, 100)
    assert [s.text for s in segs] == ["One sentence. Two sentences."]


def test_segments_fit_cover_and_end_on_sentences(tok, sample_text):
    text = sample_text * 3
    segs = segment_text(text, tok, 120)
    assert len(segs) > 5
    check_partition(text, segs, tok, 120)
    for s in segs[:-1]:
        assert re.search(r"[.!?]$", s.text), f"segment does not end a sentence: ...{s.text[-30:]!r}"


def test_deterministic_and_shared_prefix_gives_shared_segments(tok, sample_text):
    a = segment_text(sample_text, tok, 100)
    assert a == segment_text(sample_text, tok, 100)
    # A document that starts with the same text shares its leading segments.
    b = segment_text(sample_text + "\n\nA different ending paragraph follows here.", tok, 100)
    assert [s.text for s in a[:-1]] == [s.text for s in b[: len(a) - 1]]


def test_long_sentence_without_boundaries_is_split_on_spaces(tok):
    text = " ".join(f"word{i}" for i in range(400))
    segs = segment_text(text, tok, 50)
    check_partition(text, segs, tok, 50)
    assert all(not s.text.endswith("word") for s in segs)
    assert " ".join(s.text for s in segs) == text


def test_text_without_spaces_is_cut_mid_run(tok):
    text = "x" * 3000
    segs = segment_text(text, tok, 64)
    assert "".join(s.text for s in segs) == text
    assert all(s.n_tokens <= 64 for s in segs)


def test_cjk_sentences_end_on_full_stop(tok):
    text = "東京は日本の首都です。大阪は大きな都市です。" * 30
    segs = segment_text(text, tok, 40)
    assert "".join(s.text for s in segs) == text
    assert all(s.text.endswith("。") for s in segs)


# -- counting before segmenting (issue 15) ----------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from compressors.segmenter import (CUT_SLACK, LONG_UNKNOWN, PIECE_CHARS, _chunk_end,  # noqa: E402
                                   count_tokens, unknown_word_pieces, visible_runs)

PIECES = ["ab", "c", " ", "  ", "\n", "\n\n", "\t", ".", ",", "42", "\u00e9t\u00e9", "\u4e2d\u6587",
          "\u3000", "\x0c", "\x1c", "\u200b", "\x00", "\U0001f35c", "\ud55c\uad6d\uc5b4",
          "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35" * 5, "9" * 120, "e\u0301", "x" * 40]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(parts=st.lists(st.sampled_from(PIECES), max_size=200), chunk=st.sampled_from([64, 300, 1 << 16]))
def test_count_tokens_is_what_segment_counts_and_visible_runs_is_a_lower_bound(
        llmlingua2, parts, chunk):
    text = "".join(parts)
    counted = sum(s.n_tokens for s in llmlingua2.segment(text))
    assert visible_runs(text) <= counted
    got = count_tokens(text, llmlingua2.tokenizer, 10**9, unknown_pieces=True, chunk_chars=chunk)
    ends, start = [], 0
    while start < len(text):
        start, cut_in_word = _chunk_end(text, start, chunk)
        ends.append(cut_in_word)
    if not any(ends):
        assert got == counted  # every piece ended in whitespace: exact
    else:  # a piece had to end inside a word: a lower bound, off by less than the slack
        assert counted - CUT_SLACK * sum(ends) <= got <= counted


def test_count_tokens_stops_at_the_limit(llmlingua2):
    import time

    t0 = time.perf_counter()
    assert count_tokens("a " * 2_000_000, llmlingua2.tokenizer, 1000) > 1000   # the cheap bound
    assert count_tokens("\ud55c " * 2_000_000, llmlingua2.tokenizer, 1000) > 1000  # in pieces
    assert time.perf_counter() - t0 < 2.0
    assert count_tokens("a " * 1000, llmlingua2.tokenizer, 1000) == 1000


def test_a_long_unknown_word_is_counted_in_pieces(llmlingua2):
    thai = "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35" * 20  # 120 characters: one [UNK]
    (seg,) = segment_text(thai, llmlingua2.tokenizer, 500)
    assert seg.n_tokens == 1
    (seg,) = llmlingua2.segment(thai)
    pieces = unknown_word_pieces(thai, 0, len(thai))
    assert seg.n_tokens == len(pieces) > 1 and "".join(thai[s:e] for s, e in pieces) == thai
    for s, e in pieces:  # never cut before a combining mark (U+0E31, U+0E35 are marks)
        assert (e - s >= PIECE_CHARS or e == len(thai)) and thai[s] not in "\u0e31\u0e35"
    short = "\U0001f35c" * LONG_UNKNOWN
    assert unknown_word_pieces(short, 0, len(short)) == [(0, len(short))]

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

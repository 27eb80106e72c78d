"""The prose corpus (compressors/training/prose.py): openly licensed manuals
from pinned Debian packages, cleaned to English paragraphs and split by
document. The split tests download the packages (about 21 MB, once, into the
cache dir) and are in the slow tier; the cleaning tests run on small HTML."""

import re

import pytest

from compressors.training import prose
from service.config import Config

FORBIDDEN = ("debian-handbook", "debian-reference", "debian-faq", "developers-reference", "python3")


def test_no_source_is_reserved_for_evaluation():
    for s in prose.SOURCES:
        assert not s["package"].startswith(FORBIDDEN), s["package"]
        assert "python" not in s["package"] and "debian" not in s["package"]
        assert re.fullmatch(r"[0-9a-f]{64}", s["sha256"])
        assert s["licence"] and s["version"] and s["contents"]
    assert len(prose.PROVENANCE["sources"]) == len(prose.SOURCES)


def test_html_cleaning_keeps_prose_and_drops_the_rest():
    page = """<html><head><title>T</title><script>var x = 1;</script></head><body>
    <div class="navheader"><table><tr><td><a href="a.html">Prev</a> Up Next</td></tr></table></div>
    <h2 class="title">3.1. Indexes and how the planner uses them</h2>
    <p>An index lets the server find rows quickly, without reading
       the whole <code>table</code> from disk.  It costs space &amp; time on writes.</p>
    <pre class="programlisting">CREATE INDEX test1_id_index ON test1 (id);</pre>
    <div class="toc"><ul><li><p>A table of contents entry that reads like a sentence.</p></li></ul></div>
    <ul><li><p>Each list item that is a full sentence stays in the text as well.</p></li>
        <li>x = {a, b}; y = &lt;c&gt;; z = \\d[0]</li></ul>
    <p>Short one.</p>
    <div class="navfooter"><p>Prev: an earlier page of this manual, and the next page too.</p></div>
    </body></html>"""
    assert prose.html_paragraphs(page) == [
        "An index lets the server find rows quickly, without reading the whole table from disk. "
        "It costs space & time on writes.",
        "Each list item that is a full sentence stays in the text as well.",
    ]


@pytest.fixture(scope="module")
def parts():
    """The split; skipped (with apt's message) only where the pinned packages
    cannot be downloaded: no package lists (`apt-get update` never ran), or
    Debian has superseded a pinned version (the message says what to pin)."""
    try:
        return prose.split(Config().cache_dir)
    except prose.ProseError as e:
        if "could not download" not in str(e):
            raise
        pytest.skip(str(e))


@pytest.mark.slow  # downloads the pinned .debs
def test_split_is_disjoint_deterministic_and_covers_every_source(parts):
    names = {p: set(docs) for p, docs in parts.items()}
    assert set(names) == {"train", "dev", "test"}
    assert not names["train"] & names["dev"]
    assert not names["train"] & names["test"]
    assert not names["dev"] & names["test"]
    again = prose.split(Config().cache_dir)
    assert {p: list(d) for p, d in again.items()} == {p: list(d) for p, d in parts.items()}
    assert again == parts

    words = {p: sum(len(t.split()) for t in d.values()) for p, d in parts.items()}
    total = sum(words.values())
    assert total > 1_000_000
    for held in ("dev", "test"):
        assert 0.03 * total < words[held] < 0.07 * total
    for s in prose.SOURCES:
        for p, docs in parts.items():
            mine = [n for n in docs if n.startswith(s["name"] + "/")]
            assert len(mine) >= (50 if p == "train" else prose.MIN_HELD_OUT_DOCS), (s["name"], p)


@pytest.mark.slow  # downloads the pinned .debs
def test_documents_are_english_prose(parts):
    docs = {n: t for d in parts.values() for n, t in d.items()}
    paragraphs = []
    for name, text in docs.items():
        assert prose.source_of(name) in {s["name"] for s in prose.SOURCES}
        assert len(text.split()) >= prose.MIN_WORDS, name
        assert text == text.strip() and "\n\n\n" not in text
        paragraphs += text.split("\n\n")
    sentences = sum(bool(re.search(r"""[.!?:]['")\]]*$""", p)) for p in paragraphs)
    assert sentences > 0.95 * len(paragraphs)
    chars = "\n".join(paragraphs)
    for c in "<{\\":
        assert chars.count(c) < 0.001 * len(chars), c
    common = ("the", "of", "and", "to", "is", "a", "in", "that")
    lowered = chars.lower().split()
    assert sum(w in common for w in lowered) > 0.15 * len(lowered)
    # No HTML left: tags or entities (git's <pathspec>-style placeholders are text,
    # and a few paragraphs are about HTML: git-imap-send names <pre>).
    html_left = re.compile(r"</?(p|div|span|a|code|li|ul|ol|pre|br|table|td|em|strong|tt)( [^>]*)?/?>"
                           r"|&(amp|lt|gt|quot|nbsp|#[0-9]+);")
    assert len([p for p in paragraphs if html_left.search(p)]) < 0.001 * len(paragraphs)

"""The words of a request's sentences, as query-aware selection reads them:
BM25 (compressors/relevance.py), the second hop's word counts
(compressors/hop.py) and the repeat check (relevance._Seen).

A segment's `SentenceWords` depend only on its text and its sentence spans,
like its cached sentence vectors, so the pipeline keeps them in process
beside its segmentations: a request whose segments were seen before
tokenizes nothing but its question. A request's `Lexicon` joins its
segments' words in order and answers what the rules ask of all of them:

- BM25 scores of a query against every sentence, with this request's
  statistics (Lucene's variant, k1 = 1.5, b = 0.75: bm25s's defaults, whose
  tokenizer and float32 arithmetic it reproduces, so scores and ties are
  bm25s's; tests/test_lexicon.py compares them);
- in how many sentences a word occurs, and whether it occurs in lowercase
  (the second hop's rare words and names).

Three tokenizations, one per rule, as each rule was tuned:
    BM25 terms   lowercased runs of 2+ word characters, English stop words out
    hop words    _HOP_WORD runs (apostrophes and hyphens inside a word)
    repeat words lowercased \\w+ runs
"""

import functools
import logging
import math
import re
from dataclasses import dataclass

import numpy as np

K1, B = 1.5, 0.75
_TERM = re.compile(r"(?u)\b\w\w+\b")
_HOP_WORD = re.compile(r"\w[\w'\u2019-]*\w|\w")
_WORD = re.compile(r"\w+")


@functools.cache
def stopwords(plus: bool = False) -> frozenset[str]:
    """bm25s's English stop words: its tokenizer's "en" (BM25's), or its
    longer "en_plus" (the second hop's)."""
    import bm25s.stopwords

    # bm25s sets its logger to DEBUG on import; setting it back once.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return frozenset(bm25s.stopwords.STOPWORDS_EN_PLUS if plus else bm25s.stopwords.STOPWORDS_EN)


def query_terms(text: str) -> list[str]:
    """BM25 terms of a text, in order, repeats kept (bm25s.tokenize's)."""
    stop = stopwords()
    return [t for t in _TERM.findall(text.lower()) if t not in stop]


def hop_words(text: str) -> list[str]:
    """The second hop's words of a text, as written (hop.terms reads case)."""
    return _HOP_WORD.findall(text)


def repeat_words(text: str) -> tuple[str, ...]:
    """The repeat check's words of a text: lowercased \\w+ runs."""
    return tuple(w.lower() for w in _WORD.findall(text))


@dataclass(frozen=True)
class SentenceWords:
    """One segment's sentences' words (see the module docstring)."""

    words: tuple[tuple[str, ...], ...]  # per sentence: the repeat check's words
    lengths: tuple[int, ...]            # per sentence: its number of BM25 terms
    postings: dict                      # BM25 term -> ((sentence, count), ...), sentences increasing
    hop_counts: dict                    # lowercased hop word -> sentences that hold it
    lowercase: frozenset                # hop words that occur in lowercase

    @classmethod
    def of(cls, texts: list[str]) -> "SentenceWords":
        """The words of one segment's sentences, `texts` in order."""
        postings: dict[str, list] = {}
        hop_counts: dict[str, int] = {}
        lowercase: set[str] = set()
        lengths = []
        for i, text in enumerate(texts):
            terms = query_terms(text)
            lengths.append(len(terms))
            counts: dict[str, int] = {}
            for t in terms:
                counts[t] = counts.get(t, 0) + 1
            for t, c in counts.items():
                postings.setdefault(t, []).append((i, c))
            found = hop_words(text)
            lowercase.update(w for w in found if w.islower())
            for w in {w.lower() for w in found}:
                hop_counts[w] = hop_counts.get(w, 0) + 1
        return cls(tuple(repeat_words(t) for t in texts), tuple(lengths),
                   {t: tuple(p) for t, p in postings.items()}, hop_counts, frozenset(lowercase))

    def approx_bytes(self) -> int:
        """About what it holds in memory, for the in-process LRU's bound
        (Python objects: ~60 bytes a word string, ~100 a small tuple or
        dict entry)."""
        words = sum(len(w) for w in self.words)
        return 200 + 70 * words + 170 * len(self.postings) + 130 * len(self.hop_counts)


class Lexicon:
    """A request's sentences' words: its segments' SentenceWords, in
    request order (sentence i of the request is the i-th over them all)."""

    def __init__(self, segments: list[SentenceWords]):
        self.segments = segments
        self.offsets = np.cumsum([0] + [len(s.words) for s in segments])  # [segments + 1]
        self.n = int(self.offsets[-1])
        self.words = [w for s in segments for w in s.words]  # [n] each sentence's repeat-check words
        self.lengths = np.fromiter((n for s in segments for n in s.lengths), np.int64, self.n)  # [n]
        # bm25s's: the mean length as float64, each term's idf as float32.
        self.avg_length = float(self.lengths.mean()) if self.n else 0.0

    @classmethod
    def of(cls, texts: list[str]) -> "Lexicon":
        """The lexicon of `texts` as the sentences of one segment."""
        return cls([SentenceWords.of(texts)])

    def sentences_with(self, word: str) -> int:
        """How many sentences hold the (lowercased) hop word."""
        return sum(s.hop_counts.get(word, 0) for s in self.segments)

    def in_lowercase(self, word: str) -> bool:
        """Whether the hop word occurs in lowercase in some sentence."""
        return any(word in s.lowercase for s in self.segments)

    def bm25(self, query: str) -> np.ndarray:
        """BM25 scores [n] (float64) of every sentence for `query`; all zeros
        when no term of the query is in a sentence (no lexical signal: "Is
        it there?", "?", an emoji, stop words only)."""
        scores = np.zeros(self.n, np.float32)
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term in query_terms(query):  # a repeated term counts again, as in bm25s
            if term not in cache:
                cache[term] = self._term_scores(term)
            where, value = cache[term]
            scores[where] += value  # float32 sums, in query order, like bm25s's
        return scores.astype(np.float64)

    def _term_scores(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """(sentences [p], their float32 scores [p]) for one term."""
        where, tf = [], []
        for s, offset in zip(self.segments, self.offsets):
            for i, c in s.postings.get(term, ()):
                where.append(offset + i)
                tf.append(c)
        if not where:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        where = np.asarray(where, np.int64)
        tf = np.asarray(tf, np.float32)
        df = len(where)
        idf = np.float32(math.log(1 + (self.n - df + 0.5) / (df + 0.5)))
        norm = K1 * ((1 - B) + B * self.lengths[where] / np.float64(self.avg_length))  # [p] float64
        return where, (idf * (tf / (norm + tf))).astype(np.float32)

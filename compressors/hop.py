"""Two rules of query-aware selection that work on scores alone (no model):
where a ranking separates (the relevance cut) and what the best sentence
names that the question does not (the second hop's terms).

The relevance cut. Retrieved passages either answer a question about as well
as one another (spread scores: fill the budget in relevance order) or a few
stand clear of look-alikes (a gap: keep those, drop the rest even when the
budget has room, because a small reader given the answer next to nine
same-shaped facts picks the wrong one). `cut` finds the first gap from the
top of at least SEPARATION x the best score.

The second hop. A question that names someone only by a description ("the
keeper of the old lighthouse") finds the passage that resolves it, but not
the passage with that person's fact, which names them. As multi-hop
retrievers do (Baleen, MDR, IRCoT's retrieval step), what the first-ranked
sentence names joins the question for a second ranking round: `terms` are its
capitalised words (entities) and its rare words (in at most RARE_SENTENCES
sentences of the request), minus the question's words and stop words.
"""

import re
from typing import Callable

import numpy as np

from .lexicon import Lexicon, hop_words, stopwords

# Dev split (docs/quality.md): a gap of a quarter of the best score separates
# the answer's passage from look-alikes on multidoc and multihop, and no
# contexts of one relevant passage split by chance.
SEPARATION = 0.25
HOP_SENTENCES = 1    # the first-ranked sentences whose terms make the second round's query
RARE_SENTENCES = 2   # a lowercase word in at most this many sentences of the request is rare
RARE_MIN_CHARS = 5   # ... and has at least this many characters
MAX_TERMS = 8


def cut(scores: np.ndarray, separation: float | None = None) -> float:
    """The score at or above which contexts stay, where the scores [k]
    separate: the first gap from the top between neighbours in sorted order
    that is at least `separation` (default SEPARATION) x the best score. 0.0
    (everything stays) when no such gap exists, or for fewer than two scores."""
    separation = SEPARATION if separation is None else separation
    if len(scores) < 2:
        return 0.0
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if s[0] <= 0:
        return 0.0
    gaps = np.flatnonzero(s[:-1] - s[1:] >= separation * s[0])
    return float(s[gaps[0]]) if len(gaps) else 0.0


def terms(query: str, first: list[str], lexicon: Lexicon, stopwords) -> list[str]:
    """What the sentences `first` (texts, best first) name that `query` does
    not: capitalised words, then rare lowercase words (by how many of the
    request's sentences hold them, `lexicon`), each once, at most MAX_TERMS."""
    asked = {w.lower() for w in re.findall(r"\w+", query)}  # "choir's" asks for "choir"
    out: list[str] = []
    for text in first:
        words = hop_words(text)
        for j, w in enumerate(words):
            low = w.lower()
            if (low in asked or set(re.findall(r"\w+", low)) <= asked or low in stopwords
                    or low in out or w.isdigit()):
                continue
            # A capitalised word that opens the sentence is a name when the
            # next word is capitalised too ("Tara Novak") or it never occurs
            # in lowercase ("Tara is", not "However" or "Most").
            entity = _capital(w) and (j > 0 or not lexicon.in_lowercase(low) or
                                      (j + 1 < len(words) and _capital(words[j + 1])))
            rare = len(w) >= RARE_MIN_CHARS and lexicon.sentences_with(low) <= RARE_SENTENCES
            if entity or rare:
                out.append(low)
    return out[:MAX_TERMS]


def _capital(word: str) -> bool:
    return len(word) > 1 and word[0].isupper()


def chain(query: str, text_of: Callable[[int], str], lexicon: Lexicon, relevance: np.ndarray,
          ctx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(chain [k] bool, second-round score [n] in [0, 1], the source
    context): the terms the first-ranked sentences (by `relevance` [n]; their
    texts by `text_of(i)`) name, scored by BM25 over the request's sentences
    (`lexicon`) as the second round's query; the chain is the contexts,
    other than the source (the context of the first-ranked sentence), whose
    best second-round score stands clear of the others' (`cut`). `ctx` [n]
    is each sentence's context of `k`."""
    top = list(np.argsort(-relevance, kind="stable")[:HOP_SENTENCES])
    source = int(ctx[top[0]])
    words = terms(query, [text_of(i) for i in top], lexicon, stopwords(plus=True))
    second = lexicon.bm25(" ".join(words)) if words else np.zeros(len(relevance))
    none = np.zeros(k, dtype=bool)
    if not second.any():
        return none, second, source
    best = np.zeros(k)
    np.maximum.at(best, ctx, second)
    others = np.arange(k) != source  # the source is kept anyway: the cut is among the others
    level = cut(best[others])
    if level == 0.0:  # nothing stands out
        return none, second / second.max(), source
    return (best >= level) & others, second / second.max(), source

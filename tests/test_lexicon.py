"""compressors/lexicon.py: selection's words of a request's sentences,
tokenized once per segment. BM25 must give bm25s's scores exactly (the
ranking and its ties were tuned with bm25s), however the sentences are split
into segments; the hop's counts must be those of the sentences joined."""

import random

import numpy as np
import pytest

from compressors.lexicon import Lexicon, SentenceWords, repeat_words

WORDS = ("the a of harbour keeper log Tara Novak moved to Oslo spring cellar code 4821 is was and "
         "in light old North x I'm don't well-known Über café 🍜 ?").split()


def random_texts(rng: random.Random) -> tuple[list[str], str]:
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 15)))
             for _ in range(rng.randint(1, 25))]
    return texts, " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 6)))


def bm25s_scores(query: str, texts: list[str]) -> np.ndarray:
    """The reference: bm25s's own index and scores, as selection used them."""
    import bm25s

    q = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
    corpus = bm25s.tokenize(texts, stopwords="en", show_progress=False)
    if not q or not set(q) & set(corpus.vocab):
        return np.zeros(len(texts))
    retriever = bm25s.BM25()
    retriever.index(corpus, show_progress=False)
    return np.asarray(retriever.get_scores(q), dtype=np.float64)


@pytest.mark.parametrize("seed", range(4))
def test_bm25_is_bm25s_exactly_over_any_split_into_segments(seed):
    rng = random.Random(seed)
    for _ in range(50):
        texts, query = random_texts(rng)
        cut = rng.randint(0, len(texts))
        lexicon = Lexicon([SentenceWords.of(texts[:cut]), SentenceWords.of(texts[cut:])])
        assert np.array_equal(lexicon.bm25(query), bm25s_scores(query, texts)), (query, texts)


def test_the_hop_counts_are_those_of_the_sentences_joined():
    texts = ["Tara Novak moved to Oslo.", "tara went home; Tara stayed.", "Olga is the warden's aunt."]
    lexicon = Lexicon([SentenceWords.of(texts[:1]), SentenceWords.of(texts[1:])])
    assert lexicon.sentences_with("tara") == 2  # once per sentence, any case
    assert lexicon.sentences_with("warden's") == 1 and lexicon.sentences_with("oslo") == 1
    assert lexicon.in_lowercase("tara") and not lexicon.in_lowercase("olga")
    assert lexicon.words == [repeat_words(t) for t in texts]
    assert lexicon.words[2] == ("olga", "is", "the", "warden", "s", "aunt")


def test_no_sentences_no_scores():
    lexicon = Lexicon([SentenceWords.of([])])
    assert lexicon.n == 0 and lexicon.bm25("harbour").shape == (0,)

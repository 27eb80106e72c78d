"""The relevance cut and the second hop of query-aware selection (issue 24),
without a model: `hop.cut` and `hop.terms` on made-up scores and sentences,
and `choose` with BM25 alone (the made-up vectors carry no signal), so the
lexical rules decide what is kept."""

import numpy as np
import pytest

from compressors import hop
from compressors.base import ContextParts, Segment
from compressors.lexicon import Lexicon
from compressors.relevance import Options, choose
from compressors.segmenter import sentence_spans

STOP = {"the", "is", "a", "of", "to", "did", "which", "what", "who"}
FILLER = ["The harbour froze early that winter and the ferries stopped for a week.",
          "Most of the town's bread came from a single bakery near the station.",
          "A new road to the coast was finished after three years of work.",
          "The library moved into the old customs house in the spring.",
          "Fishing boats were repainted every year before the summer festival.",
          "The museum kept a collection of maps drawn by local sailors."]


@pytest.mark.parametrize("scores,level", [
    ([1.0, 0.45, 0.4, 0.38], 1.0),       # one stands clear
    ([1.0, 0.95, 0.4, 0.38], 0.95),      # two stand clear together
    ([1.0, 0.9, 0.8, 0.7, 0.6], 0.0),    # spread: no gap of a quarter of the best
    ([0.8], 0.0),                        # one context: nothing to cut
    ([0.0, 0.0], 0.0),
])
def test_the_cut_is_the_first_gap_of_a_quarter_of_the_best(scores, level):
    assert hop.cut(np.array(scores)) == level


def test_terms_are_what_the_sentence_names_that_the_question_does_not():
    texts = ["Tara Novak is the keeper of the old lighthouse.", "However, it rained.",
             "Tara Novak moved to Oslo.", "Olga is the warden.", "olga went home, however.",
             "It rained, however.", "It rained again."]
    q = "Which city did the keeper of the old lighthouse's cousin move to?"
    lexicon = Lexicon.of(texts)
    assert hop.terms(q, [texts[0]], lexicon, STOP) == ["tara", "novak"]
    assert hop.terms(q, [texts[1]], lexicon, STOP) == []  # "However" also lowercase; neither is rare
    assert hop.terms(q, [texts[3]], lexicon, STOP) == ["warden"]  # "Olga" is also a lowercase word here
    assert hop.terms("Who is Tara Novak?", [texts[2]], lexicon, STOP) == ["moved", "oslo"]


def parts_and_vectors(contexts):
    rng = np.random.default_rng(0)
    parts, vectors = [], []
    for c in contexts:
        spans = np.asarray(sentence_spans(c), np.int32).reshape(-1, 2)
        v = rng.normal(size=(len(spans), 8)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        parts.append(ContextParts(c, [Segment(0, len(c), c, len(c.split()))], []))
        vectors.append([{"spans": spans, "vectors": v.astype(np.float16)}])
    return parts, vectors


def select(contexts, query, budget, **options):
    parts, vectors = parts_and_vectors(contexts)
    q = np.ones(8, np.float32) / np.sqrt(8)
    return choose(parts, vectors, query, q, budget, Options(ranker="bm25", **options))


PEOPLE = ["Olga Petrov", "Pavel Moreau", "Ines Brandt", "Hiro Gallo", "Kira Jensen"]


def test_the_second_hop_keeps_the_passage_the_description_leads_to():
    """The bridge names the keeper; the keeper's fact is under the name in
    another passage, among the same fact for other people."""
    contexts = [f"{FILLER[i]} {p} moved to Porto last spring." for i, p in enumerate(PEOPLE)]
    contexts[3] = f"{FILLER[3]} Tara Novak moved to Hanoi last spring."
    contexts.append(f"{FILLER[5]} Tara Novak is the keeper of the old lighthouse.")
    total = sum(len(c.split()) for c in contexts)
    choices = select(contexts, "Which city did the keeper of the old lighthouse move to?",
                     round(0.33 * total))
    assert choices[5].rank == 0 and choices[3].rank == 1
    assert [c.kept for c in choices] == [False, False, False, True, False, True]
    assert [c.below_cut for c in choices] == [True, True, True, False, True, False]


def test_without_a_gap_the_budget_is_filled_in_relevance_order():
    """Every passage is about the question about as much: the budget is
    used, not cut to the best one."""
    contexts = [f"The ferry to the island leaves at {h} from pier {h + 1}. {FILLER[h]}"
                for h in range(5)]
    total = sum(len(c.split()) for c in contexts)
    choices = select(contexts, "When does the ferry to the island leave?", round(0.6 * total))
    assert sum(c.kept for c in choices) >= 3
    assert not any(c.below_cut for c in choices)
    kept = sum(len(" ".join(f"{s}" for s in c.allowed).split()) for c in choices)
    assert kept > 0


def test_an_explicit_min_relevance_is_an_absolute_cut():
    contexts = [f"{FILLER[i]} {p} moved to Porto last spring." for i, p in enumerate(PEOPLE)]
    total = sum(len(c.split()) for c in contexts)
    filled = select(contexts, "Which city did Hiro Gallo move to?", total, min_relevance=0.0)
    cut = select(contexts, "Which city did Hiro Gallo move to?", total, min_relevance=1.0)
    assert all(c.kept for c in filled) and not any(c.below_cut for c in filled)
    assert [c.kept for c in cut] == [False, False, False, True, False]
    assert sum(c.below_cut for c in cut) == 4

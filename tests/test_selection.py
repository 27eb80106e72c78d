"""Query-aware selection against the real server (llmlingua2 and the sentence
embedder loaded, a real Redis): relevance, budgets, kept flags, repeats kept
once, order, cache hits across questions, and bad input."""

import uuid

import grpc
import pytest

from segpress import SegpressClient
from segpress.v1 import segpress_pb2 as pb

FILLER = [
    "The harbour froze early that winter and the ferries stopped for a week.",
    "Most of the town's bread came from a single bakery near the station.",
    "A new road to the coast was finished after three years of work.",
    "The library moved into the old customs house in the spring.",
    "Fishing boats were repainted every year before the summer festival.",
    "The museum kept a collection of maps drawn by local sailors.",
]
PEOPLE = [("Tara Novak", "Hanoi"), ("Olga Petrov", "Oslo"), ("Pavel Moreau", "Porto"),
          ("Ines Brandt", "Tallinn"), ("Hiro Gallo", "Zagreb"), ("Kira Jensen", "Lisbon")]
# Six passages of the same shape: one fact sentence each, among filler.
PASSAGES = [f"{FILLER[i]} {name} moved to {city} last spring. {FILLER[(i + 1) % 6]}"
            for i, (name, city) in enumerate(PEOPLE)]


@pytest.fixture()
def ns():
    return "sel-" + uuid.uuid4().hex[:12]


def test_the_passage_the_question_asks_about_comes_first(client, ns):
    resp = client.compress(PASSAGES, rate=0.33, namespace=ns,
                           query="Which city did Pavel Moreau move to?")
    gold = resp.contexts[2]
    assert gold.kept and gold.rank == 0 and "Porto" in gold.text
    assert gold.relevance == max(c.relevance for c in resp.contexts) > 0
    assert sorted(c.rank for c in resp.contexts) == list(range(len(PASSAGES)))
    dropped = [c for c in resp.contexts if not c.kept]
    assert dropped and all(c.text == "" and c.compressed_tokens == 0 for c in dropped)
    assert all(c.original_tokens > 0 for c in resp.contexts)  # every context keeps its entry
    s = resp.stats
    assert s.compressed_tokens <= round(0.33 * s.original_tokens)
    assert s.timings.select_ms > 0
    assert "Porto" in resp.text and "\n\n\n\n" not in resp.text  # dropped contexts leave no gap


def test_one_pass_gives_a_question_its_vectors_and_every_segments_values(client, ns):
    """Served by default, sentence vectors are pooled from the classifier's
    pass: a question's one pass over every segment stores the compressor's
    values of all of them too, so neither a later question nor a request
    without one passes a segment through the model again."""
    first = client.compress(PASSAGES, namespace=ns, query="Who moved to Oslo?")
    n = first.stats.segments
    assert first.stats.sentence_vector_misses == n and first.stats.cache_hits == 0
    assert 0 < first.stats.cache_misses < n  # the kept contexts' segments, computed in that pass
    assert first.contexts[1].rank == 0 and "Oslo" in first.contexts[1].text
    again = client.compress(PASSAGES, namespace=ns, query="What did Hiro Gallo do last spring?")
    assert (again.stats.sentence_vector_hits, again.stats.sentence_vector_misses) == (n, 0)
    assert again.stats.cache_misses == 0 and again.stats.cache_hits > 0
    assert again.contexts[4].rank == 0 and "Zagreb" in again.contexts[4].text
    whole = client.compress(PASSAGES, namespace=ns)  # no question: every segment, all cached
    assert (whole.stats.cache_hits, whole.stats.cache_misses) == (n, 0)
    fresh = client.compress(PASSAGES, namespace=ns + "-b")  # the same values computed alone
    assert fresh.stats.cache_misses == n and fresh.text == whole.text


def test_minilm_vectors_compress_only_the_segments_a_question_keeps(redis_proc, llmlingua2,
                                                                    sentence_vectors, ns):
    """With --sentence-vectors minilm, sentence vectors are MiniLM's over
    every segment; the compressor's values only for the segments selection
    kept, each once across questions."""
    from helpers import InProcessServer
    from service.config import Config

    server = InProcessServer(Config(port=0, redis_url=redis_proc.url, metrics_port=0),
                             {"llmlingua2": llmlingua2}, sentence_vectors)
    try:
        with SegpressClient(server.target, timeout_s=60) as c:
            first = c.compress(PASSAGES, namespace=ns, query="Who moved to Oslo?")
            n = first.stats.segments
            assert first.stats.sentence_vector_misses == n and first.stats.cache_hits == 0
            assert 0 < first.stats.cache_misses < n  # the kept contexts' segments only
            assert first.contexts[1].rank == 0 and "Oslo" in first.contexts[1].text
            again = c.compress(PASSAGES, namespace=ns, query="What did Hiro Gallo do last spring?")
            assert (again.stats.sentence_vector_hits, again.stats.sentence_vector_misses) == (n, 0)
            assert again.contexts[4].rank == 0 and "Zagreb" in again.contexts[4].text
            repeat = c.compress(PASSAGES, namespace=ns, query="Who moved to Oslo?")
            assert repeat.stats.cache_misses == 0 and repeat.text == first.text
            whole = c.compress(PASSAGES, namespace=ns)  # no question: every segment
            assert whole.stats.cache_hits + whole.stats.cache_misses == n
            assert whole.stats.cache_hits == first.stats.cache_misses + again.stats.cache_misses
    finally:
        server.stop()


def test_repeated_sentences_are_kept_once_but_same_template_facts_both(client, ns):
    shared = "The ferry to the island leaves every morning at seven from the north pier."
    contexts = [f"{shared} Tara Novak moved to Hanoi last spring.",
                f"{shared} Olga Petrov moved to Oslo last spring."]
    resp = client.compress(contexts, rate=1.0, namespace=ns, keep_rate=1.0, min_relevance=0.0,
                           query="When does the ferry leave, and who moved where?")
    assert resp.text.count(shared) == 1
    assert "Hanoi" in resp.text and "Oslo" in resp.text  # one template, other names: both stay
    both = client.compress(contexts, rate=1.0, namespace=ns, keep_rate=1.0, keep_duplicates=True,
                           min_relevance=0.0, query="When does the ferry leave, and who moved where?")
    assert both.text.count(shared) == 2


def test_order_by_relevance_puts_the_best_context_first_in_the_text(client, ns):
    q = "Which city did Kira Jensen move to?"
    original = client.compress(PASSAGES, rate=0.5, namespace=ns, query=q, min_relevance=0.0)
    ranked = client.compress(PASSAGES, rate=0.5, namespace=ns, query=q, order="relevance",
                             min_relevance=0.0)
    assert ranked.text.startswith(ranked.contexts[5].text) and "Lisbon" in ranked.contexts[5].text
    assert not original.text.startswith(original.contexts[5].text)
    assert [c.text for c in ranked.contexts] == [c.text for c in original.contexts]


def test_look_alike_contexts_are_dropped_unless_min_relevance_is_lowered(client, ns):
    q = "Which city did Tara Novak move to?"
    default = client.compress(PASSAGES, rate=0.5, namespace=ns, query=q)
    filled = client.compress(PASSAGES, rate=0.5, namespace=ns, query=q, min_relevance=0.0)
    assert default.contexts[0].rank == 0 and "Hanoi" in default.contexts[0].text
    kept = [c for c in default.contexts if c.kept]
    assert all(c.relevance >= 0.75 for c in kept)
    assert sum(c.kept for c in filled.contexts) > len(kept)
    assert filled.stats.compressed_tokens > default.stats.compressed_tokens


def test_look_alikes_are_reported_below_the_cut_and_a_spread_budget_is_used(client, ns):
    resp = client.compress(PASSAGES, rate=0.5, namespace=ns,
                           query="Which city did Ines Brandt move to?")
    assert [c.kept for c in resp.contexts] == [i == 3 for i in range(6)]
    assert [c.below_cut for c in resp.contexts] == [i != 3 for i in range(6)]
    # Passages about as relevant to this question each: no cut, the budget is used.
    ferries = [f"{f} The ferry to the island leaves at {i + 6} in the morning."
               for i, f in enumerate(FILLER)]
    spread = client.compress(ferries, rate=0.5, namespace=ns,
                             query="When does the ferry to the island leave?")
    assert not any(c.below_cut for c in spread.contexts)
    assert sum(c.kept for c in spread.contexts) >= 3


def test_a_multi_hop_question_keeps_the_bridge_and_the_fact(client, ns):
    """The question names the keeper by description; one passage says who it
    is, another where that person moved, the others where other people did."""
    contexts = list(PASSAGES)
    contexts[4] = f"{FILLER[4]} Tara Novak is the keeper of the old lighthouse. {FILLER[5]}"
    resp = client.compress(contexts, rate=0.33, namespace=ns,
                           query="Which city did the keeper of the old lighthouse move to?")
    assert "lighthouse" in resp.text and "Hanoi" in resp.text
    assert [c.kept for c in resp.contexts] == [True, False, False, False, True, False]
    assert {resp.contexts[0].rank, resp.contexts[4].rank} == {0, 1}


def test_threshold_mode_with_a_question_keeps_the_relevant_passage(client, ns):
    """No budget: the coarse stage keeps keep_rate of the tokens, and the
    threshold picks the words inside what it kept."""
    resp = client.compress(PASSAGES, threshold=0.5, namespace=ns,
                           query="Which city did Pavel Moreau move to?")
    assert resp.contexts[2].rank == 0 and "Porto" in resp.contexts[2].text
    assert 0 < resp.stats.compressed_tokens < 0.5 * resp.stats.original_tokens
    wider = client.compress(PASSAGES, threshold=0.0, keep_rate=1.0, min_relevance=0.0,
                            keep_duplicates=True, namespace=ns,
                            query="Which city did Pavel Moreau move to?")
    assert wider.stats.compressed_tokens == wider.stats.original_tokens


def test_selection_off_is_the_query_blind_output(client, ns):
    blind = client.compress(PASSAGES, rate=0.33, namespace=ns)
    off = client.compress(PASSAGES, rate=0.33, namespace=ns, query="Who moved to Oslo?",
                          selection=False)
    assert off.text == blind.text and all(c.kept for c in off.contexts)
    assert off.stats.sentence_vector_hits == off.stats.sentence_vector_misses == 0


def test_rankers_agree_on_an_easy_question(client, ns):
    for ranker in ("dense", "bm25", "hybrid"):
        resp = client.compress(PASSAGES, rate=0.33, namespace=ns, ranker=ranker,
                               query="Which city did Ines Brandt move to?")
        assert resp.contexts[3].rank == 0, ranker


def test_info_reports_the_query_limit(client):
    assert client.info().limits.max_query_tokens >= 128


@pytest.mark.parametrize("build,code,words", [
    (lambda: SegpressClient.request(PASSAGES[:1], query="   "),
     grpc.StatusCode.INVALID_ARGUMENT, "query is set but empty"),
    (lambda: SegpressClient.request(PASSAGES[:1], query="why " * 600),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "max_query_tokens="),
    # Fewer words than the limit, more tokens: counted by the embedder's tokenizer.
    (lambda: SegpressClient.request(PASSAGES[:1], query=" ".join(f"q{i}x" for i in range(150))),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "max_query_tokens="),
    (lambda: SegpressClient.request(PASSAGES[:1], query="why?", keep_rate=0.0),
     grpc.StatusCode.INVALID_ARGUMENT, "selection.keep_rate must be in (0, 1]"),
    (lambda: SegpressClient.request(PASSAGES[:1], query="why?", keep_rate=float("nan")),
     grpc.StatusCode.INVALID_ARGUMENT, "selection.keep_rate"),
    (lambda: SegpressClient.request(PASSAGES[:1], query="why?", min_relevance=1.5),
     grpc.StatusCode.INVALID_ARGUMENT, "selection.min_relevance must be in [0, 1]"),
    (lambda: SegpressClient.request(PASSAGES[:1], query="why?", min_relevance=float("nan")),
     grpc.StatusCode.INVALID_ARGUMENT, "selection.min_relevance"),
    (lambda: pb.CompressRequest(contexts=PASSAGES[:1], query="why?",
                                selection=pb.SelectionOptions(ranker=9)),
     grpc.StatusCode.INVALID_ARGUMENT, "selection.ranker 9 is unknown"),
    (lambda: pb.CompressRequest(contexts=PASSAGES[:1], query="why?",
                                selection=pb.SelectionOptions(order=7)),
     grpc.StatusCode.INVALID_ARGUMENT, "selection.order 7 is unknown"),
])
def test_bad_selection_input(server, build, code, words):
    from segpress.v1 import segpress_pb2_grpc as pb_grpc

    with server.channel() as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.SegpressStub(ch).Compress(build(), timeout=60)
    assert e.value.code() == code and words in e.value.details()
    with SegpressClient(server.target) as c:
        assert c.info().limits.max_query_tokens  # still serving


def test_client_refuses_unknown_selection_words():
    with pytest.raises(ValueError, match="ranker"):
        SegpressClient.request(["x"], query="q", ranker="magic")
    with pytest.raises(ValueError, match="order"):
        SegpressClient.request(["x"], query="q", order="random")


def test_a_malformed_cached_sentence_value_is_a_miss_with_the_same_output(client, redis_proc, ns):
    import numpy as np

    from cache import codec
    from compressors.base import Kind

    q = "Which city did Olga Petrov move to?"
    first = client.compress(PASSAGES, rate=0.33, namespace=ns, query=q)
    r = redis_proc.client()
    keys = r.keys(f"segpress:v1:{ns}:sentences-pooled:*")  # the default vectors
    assert len(keys) == first.stats.segments
    # A valid checksum, but spans outside the segment and the wrong width.
    r.set(keys[0], codec.encode(Kind.SENTENCE_VECTORS, {
        "spans": np.array([[0, 10_000]], np.int32), "vectors": np.zeros((1, 3), np.float16)}))
    again = client.compress(PASSAGES, rate=0.33, namespace=ns, query=q)
    assert again.stats.sentence_vector_misses == 1 and again.stats.cache_errors >= 1
    assert again.text == first.text
    assert client.compress(PASSAGES, rate=0.33, namespace=ns, query=q).stats.sentence_vector_misses == 0

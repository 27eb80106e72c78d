"""The warm path: a request whose segments are all cached gives exactly the
response the cold request gave, through Redis alone or through the
in-process LRUs (segmentations, --local-cache-mb values), and render's
vectorised pieces equal the plain loops they replaced."""

import asyncio
import random
import re

import numpy as np
import pytest
from google.protobuf import json_format

from cache.local import LocalCache
from segpress import SegpressClient
from service.config import SAMPLE, Config
from service.pipeline import Pipeline
from service.assemble import make_store

from tiny import Tiny


def test_local_cache_is_bounded_and_least_recently_used_goes_first():
    c = LocalCache(100)
    c.put("a", 1, 40)
    c.put("b", 2, 40)
    assert c.get("a") == 1          # a is now the most recent
    c.put("c", 3, 40)               # over 100: b goes
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3
    assert c.bytes == 80 and len(c) == 2
    c.put("huge", 4, 101)           # larger than the whole cache: not kept
    assert c.get("huge") is None and len(c) == 2
    c.put("a", 5, 10)               # replaced, size updated
    assert c.get("a") == 5 and c.bytes == 50
    assert (c.hits, c.misses) == (4, 2)
    assert not LocalCache(0)


class CountingTiny(Tiny):
    def __init__(self):
        super().__init__()
        self.segmented = 0

    def segment(self, text):
        self.segmented += 1
        return super().segment(text)


def _run(config, compressor, requests, selector=None):
    async def go():
        store, _ = await make_store(config)
        pipeline = Pipeline(config, {compressor.name: compressor}, store, selector)
        try:
            return [await pipeline.compress(r) for r in requests], pipeline
        finally:
            await pipeline.close()
            await store.close()
    return asyncio.run(go())


def _same(a, b):
    assert a.text == b.text
    assert [json_format.MessageToDict(c) for c in a.contexts] == \
           [json_format.MessageToDict(c) for c in b.contexts]


@pytest.mark.parametrize("local_mb", [0, 8])
def test_warm_response_is_the_cold_response(redis_proc, local_mb):
    tiny = CountingTiny()
    texts = [SAMPLE.read_text(encoding="utf-8"), "Short one. Two words.", "x " * 50]
    ns = f"warm-{local_mb}-{random.random()}"
    config = Config(redis_url=redis_proc.url, local_cache_mb=local_mb)
    req = SegpressClient.request(texts, namespace=ns, compressor="tiny")
    (cold, warm, again), pipeline = _run(config, tiny, [req, req, req])
    _same(cold, warm)
    _same(cold, again)
    assert cold.stats.cache_misses == cold.stats.segments
    assert warm.stats.cache_hits == warm.stats.segments and warm.stats.cache_misses == 0
    assert tiny.segmented == len(texts)  # segmented once, then from the LRU
    assert len(tiny.encoded) == len(set(tiny.encoded))  # each unique segment encoded once
    assert pipeline.values.hot_values.hits == (2 * len(tiny.encoded) if local_mb else 0)  # per unique key


def test_segmentation_lru_off_segments_every_time(redis_proc):
    tiny = CountingTiny()
    config = Config(redis_url=redis_proc.url, segment_cache_mb=0)
    req = SegpressClient.request(["One two three.", "Four five."], compressor="tiny",
                                 namespace=f"seg-off-{random.random()}")
    (a, b), _ = _run(config, tiny, [req, req])
    _same(a, b)
    assert tiny.segmented == 4


def test_selection_words_come_from_the_lru_and_change_nothing(redis_proc, sentence_vectors):
    """With a question, each segment's sentences' words (for BM25, the hop
    and the repeat check) are tokenized once and kept in process; the
    choices are those of a pipeline that tokenizes them every time."""
    texts = [SAMPLE.read_text(encoding="utf-8"), "Tara Novak moved to Oslo. She keeps the lighthouse.",
             "The keeper of the lighthouse wrote in his log every night."]
    ns = f"words-{random.random()}"
    reqs = [SegpressClient.request(texts, namespace=ns, compressor="tiny", query=q)
            for q in ("Where did Tara Novak move?", "What did the keeper write?",
                      "Where did Tara Novak move?")]
    config = Config(redis_url=redis_proc.url)
    with_lru, pipeline = _run(config, CountingTiny(), reqs, sentence_vectors)
    words = [k for k in pipeline.segmentations._items if k[0] == "words"]
    assert len(words) == with_lru[0].stats.segments  # one entry per segment, made once
    assert pipeline.segmentations.hits >= 2 * len(words)  # ... and read by the next two requests
    without, _ = _run(Config(redis_url=redis_proc.url, segment_cache_mb=0), CountingTiny(), reqs,
                      sentence_vectors)
    for a, b in zip(with_lru, without):
        _same(a, b)
    assert with_lru[0].contexts[1].rank == 0 and with_lru[1].contexts[2].rank == 0


@pytest.mark.slow
@pytest.mark.parametrize("params", [
    dict(rate=0.33), dict(rate=0.2, granularity="sentence"), dict(target_tokens=300),
    dict(rate=0.25, force_tokens=["\n", "the"], force_reserve_digit=True, drop_consecutive=True),
])
def test_llmlingua2_warm_equals_cold(redis_proc, llmlingua2, params):
    from service.benchmarks.serving import bench_texts

    texts = bench_texts(SAMPLE.read_text(encoding="utf-8"), 3)
    ns = f"l2-{random.random()}"
    config = Config(redis_url=redis_proc.url, local_cache_mb=8)
    req = SegpressClient.request(texts, namespace=ns, **params)
    bypass = SegpressClient.request(texts, cache="bypass", **params)
    (cold, warm, hot, uncached), _ = _run(config, llmlingua2, [req, req, req, bypass])
    for r in (warm, hot, uncached):
        _same(cold, r)
    assert hot.stats.cache_hits == hot.stats.segments


# -- render's vectorised pieces ------------------------------------------------

_SPACE_RUN = re.compile(r"\s+")


def _join_loop(text, spans):
    """llmlingua2._join as it was: every gap through the regex."""
    parts, prev_end = [], None
    for s, e in spans:
        if prev_end is not None:
            gap = text[prev_end:s]
            runs = _SPACE_RUN.findall(gap)
            lines = [r for r in runs if "\n" in r]
            if lines or runs:
                parts.append((lines or runs)[-1])
            elif gap and not (text[s].isspace() or text[prev_end - 1].isspace()):
                parts.append(" ")
        parts.append(text[s:e])
        prev_end = e
    return "".join(parts)


def test_join_equals_the_plain_loop():
    from compressors.keep import join

    rng = random.Random(0)
    alphabet = ["a", "b", "7", ";", " ", "  ", "\n", "\n\n", " \n ", "\t", "\u00a0", "é"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, 2 * rng.randint(1, 6))))
        spans = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if a < b]
        assert join(text, spans) == _join_loop(text, spans), (text, spans)


def test_select_items_are_plain_python_values(llmlingua2, sample_text):
    from compressors.base import ContextParts
    from compressors.keep import context_words, select
    from compressors.llmlingua2 import Params

    segs = llmlingua2.segment(sample_text)
    w = context_words(ContextParts(sample_text, segs, llmlingua2.encode([s.text for s in segs])))
    items = select(sample_text, w, 100, Params(rate=0.3, force_tokens=["Ardmore"]))
    assert items and all(type(s) is int and type(e) is int and type(f) is bool and type(t) is int
                         for s, e, f, t in items)
    kept = np.array([(s, e) for s, e, _, _ in items])
    assert (np.diff(kept[:, 0]) > 0).all()

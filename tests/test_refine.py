"""Refinement at compress time (compressors/refine.py): in process on the real
decoder and the shipped weights, and through a real `segpress serve` (with
complm, --max-refine-steps 4 and --max-refine-segment-steps 12) on a real
Redis."""

import grpc
import numpy as np
import pytest
import torch

from compressors import models
from compressors.base import InvalidParams
from compressors.complm import DEFAULT_WEIGHTS
from compressors.training import soft
from service.config import Config

from conftest import ServerProcess

pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="no trained complm weights")

FACTS = ("Tara Novak moved to Valparaiso last spring. The access code for the wine cellar is "
         "4821. Anna painted the kayak purple.")


@pytest.fixture(scope="module")
def decoder_dir():
    return models.ensure_smollm2(Config().models_dir)


@pytest.fixture(scope="module")
def complm(decoder_dir):
    from compressors.complm import CompLLM

    return CompLLM(decoder_dir, dtype="float32", max_refine_steps=8)


def reconstruction(comp, values, name: str, texts: list[str]):
    """Teacher-forced (loss, token accuracy per segment) of the unchanged
    decoder reading each segment's rows `values[i][name]` and <rec>."""
    dec, tok = comp._plain_decoder(), comp.tokenizer
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    rec = comp.model.task("rec").detach()
    prefixes = [soft.prefix(dec.get_input_embeddings(), bos, torch.from_numpy(v[name]), rec) for v in values]
    with torch.no_grad():
        loss, _, accuracy = soft.decoder_loss(dec, prefixes, ids)
    return float(loss), accuracy.tolist()


def test_refined_rows_reconstruct_their_segment(complm):
    texts = [s.text for s in complm.segment(FACTS)]
    assert len(texts) == 3
    plain = complm.encode(texts)
    refined = complm.variant(complm.Params(refine_steps=5)).encode(texts)
    assert [set(v) for v in refined] == [{"ces"}] * 3
    assert [v["ces"].shape for v in refined] == [v["ces"].shape for v in plain]
    before, acc_before = reconstruction(complm, plain, "ces", texts)
    after, acc_after = reconstruction(complm, refined, "ces", texts)
    # The names and the number are what the encoder's rows lose; 5 steps get them back.
    assert min(acc_before) < 0.9 and after < before / 4 and min(acc_after) == 1.0, \
        (before, acc_before, after, acc_after)


def test_a_segments_refined_rows_do_not_depend_on_its_batch(complm):
    v = complm.variant(complm.Params(refine_steps=2))
    texts = [s.text for s in complm.segment(FACTS)]
    together = v.encode(texts)
    alone = v.encode(texts[1:2])
    np.testing.assert_allclose(alone[0]["ces"], together[1]["ces"], atol=1e-5)


def test_a_variant_per_steps_with_its_own_cache_identity(complm):
    p = complm.Params
    assert complm.variant(p()) is complm
    v2, v3 = complm.variant(p(refine_steps=2)), complm.variant(p(refine_steps=3))
    assert v2 is complm.variant(p(refine_steps=2)) and v2 is not v3
    assert len({complm.cache_id, v2.cache_id, v3.cache_id}) == 3
    assert v2.cache_id.startswith(complm.cache_id) and v2.name == complm.name
    seg = complm.segment(FACTS)[0]
    (value,) = v2.encode([seg.text])
    assert v2.check_encoded(value, seg) and complm.check_encoded(value, seg)
    assert not v2.check_encoded({**value, "extra": value["ces"]}, seg)


def test_the_pull_keeps_the_rows_near_the_encoders_and_is_in_the_identity(decoder_dir, complm):
    """The served pull toward the encoder's rows (refine.py's PULL) leaves
    the refined rows closer to them than the same steps without it, and is
    part of the cache identity (rows refined with another pull are other
    values)."""
    from compressors.complm import CompLLM
    from compressors.refine import PULL

    texts = [s.text for s in complm.segment(FACTS)]
    plain = complm.encode(texts)
    free = CompLLM(decoder_dir, dtype="float32", max_refine_steps=8)
    free.refine_pull = 0.0
    p = complm.Params(refine_steps=8)
    pulled, unpulled = complm.variant(p), free.variant(p)
    assert PULL > 0 and f":pull{PULL}:" in pulled.cache_id and ":pull" not in unpulled.cache_id
    assert pulled.cache_id.startswith(complm.cache_id) and unpulled.cache_id.startswith(complm.cache_id)

    def drift(values):
        return [float(np.linalg.norm(v["ces"] - q["ces"]) / np.linalg.norm(q["ces"]))
                for v, q in zip(values, plain)]

    near, far = drift(pulled.encode(texts)), drift(unpulled.encode(texts))
    assert all(n < 0.97 * f for n, f in zip(near, far)), (near, far)  # measured: 0.82-0.92 of it


def test_refine_steps_are_checked(complm):
    p = complm.Params
    with pytest.raises(InvalidParams, match="complm.refine_steps must be 0"):
        p(refine_steps=-1).check()
    with pytest.raises(InvalidParams, match="refines at most 8 steps"):
        complm.check_params(p(refine_steps=9))
    complm.check_params(p(refine_steps=8))


def test_arc_refines_only_the_requested_factor_for_the_evaluation(decoder_dir):
    """arc's rows refined (`segpress eval arc --refine-steps`; not served:
    refining them measured worse)."""
    from compressors.arc import DEFAULT_WEIGHTS as ARC_WEIGHTS, Arc

    if not ARC_WEIGHTS.exists():
        pytest.skip("no trained arc weights")
    arc = Arc(decoder_dir, dtype="float32", max_refine_steps=4)
    seg = arc.segment(FACTS)[0]
    (plain,) = arc.encode([seg.text])
    v = arc.variant(arc.Params(pooling_factor=4, refine_steps=3))
    assert v is not arc.variant(arc.Params(pooling_factor=8, refine_steps=3))
    (value,) = v.encode([seg.text])
    assert set(value) == {"x4"} and value["x4"].shape == plain["x4"].shape
    assert v.check_encoded(value, seg) and not arc.check_encoded(value, seg)
    before, _ = reconstruction(arc, [plain], "x4", [seg.text])
    after, _ = reconstruction(arc, [value], "x4", [seg.text])
    assert after < before


# -- through a real server ---------------------------------------------------------


@pytest.fixture(scope="module")
def client(redis_proc):
    from segpress import SegpressClient

    s = ServerProcess({
        "SEGPRESS_REDIS_URL": redis_proc.url,
        "SEGPRESS_CACHE_DIR": Config().cache_dir,  # for the shared models; Redis is redis_proc
        "SEGPRESS_COMPRESSORS": "complm",
        "SEGPRESS_MAX_REFINE_STEPS": "4",
        "SEGPRESS_MAX_REFINE_SEGMENT_STEPS": "12",
    })
    try:
        with SegpressClient(s.target, timeout_s=120) as c:
            yield c
    finally:
        s.stop()


def test_served_refinement_is_cached_apart_and_limited(client):
    from segpress import SegpressError
    from segpress.tensors import to_numpy

    ns = "refine"
    plain = client.compress(FACTS, compressor="complm", namespace=ns)
    refined = client.compress(FACTS, compressor="complm", namespace=ns, refine_steps=2)
    # Its own values: not the plain ones from the cache, and as many rows.
    assert refined.stats.cache_misses == refined.stats.segments == plain.stats.segments
    assert list(refined.tensor.shape) == list(plain.tensor.shape)
    assert not np.array_equal(to_numpy(refined.tensor), to_numpy(plain.tensor))
    # The <Cont> row at the end is the same in both.
    assert np.array_equal(to_numpy(refined.tensor)[-1], to_numpy(plain.tensor)[-1])
    again = client.compress(FACTS, compressor="complm", namespace=ns, refine_steps=2)
    assert again.stats.cache_hits == again.stats.segments and again.tensor.data == refined.tensor.data
    assert client.compress(FACTS, compressor="complm", namespace=ns).tensor.data == plain.tensor.data

    assert client.info().limits.max_refine_steps == 4
    for steps, words in ((5, "refines at most 4 steps"), (-1, "must be 0")):
        with pytest.raises(SegpressError) as e:
            client.compress(FACTS, compressor="complm", refine_steps=steps)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details


def test_refinement_over_the_segment_steps_limit_is_refused_before_any_is_done(client):
    from segpress import SegpressError

    ns = "refine-limit"
    assert client.info().limits.max_refine_segment_steps == 12
    with pytest.raises(SegpressError) as e:  # FACTS: 3 segments x 4 steps fit; with another, not
        client.compress([FACTS, "A second context. It has two segments, or more."], compressor="complm",
                        namespace=ns, refine_steps=4)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_refine_segment_steps=12" in e.value.details and "refine_steps" in e.value.details
    first = client.compress(FACTS, compressor="complm", namespace=ns, refine_steps=4)
    assert first.stats.cache_misses == 3
    # Cached segments need no refinement: only the new context's count.
    both = client.compress([FACTS, "A second context. It has two segments, or more."], compressor="complm",
                           namespace=ns, refine_steps=4)
    assert both.stats.cache_hits == 3


def test_the_cost_benchmark_times_both_side_by_side(capsys):
    import json

    from service.benchmarks import refine

    threads = str(torch.get_num_threads())  # the benchmark sets torch's threads: leave them as they are
    assert refine.main(["--segments", "2", "--steps", "1", "--threads", threads, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["segments"] == 2 and [r["refine_steps"] for r in out["rows"]] == [0, 1]
    assert out["rows"][0]["ratio"] == 1.0 and all(r["seconds"] > 0 for r in out["rows"])

"""The llmlingua2 classifier on ONNX Runtime (--engine onnx, onnx-int8) and
OpenVINO (--engine openvino, float32 or bfloat16): exported once into the
model directory, the same keep decisions as torch, its own cache identity."""

import os

import pytest

from compressors.llmlingua2 import LLMLingua2
from compressors.artifacts import ModelError
from compressors.engines import resolve_dtype
from compressors.export import ensure_onnx
from service.benchmarks.serving import agreement, bench_texts, keep_decisions


@pytest.fixture(scope="module")
def engines(model_dir):
    made = {name: LLMLingua2(model_dir, engine=name) for name in ("onnx", "onnx-int8")}
    for dtype in ("float32", "bfloat16"):
        made[f"openvino-{dtype}"] = LLMLingua2(model_dir, engine="openvino", dtype=dtype)
    made["openvino-int8"] = LLMLingua2(model_dir, engine="openvino-int8")
    return made


@pytest.fixture(scope="module")
def torch_fp32(model_dir):
    return LLMLingua2(model_dir, dtype="float32")


def test_onnx_keeps_the_words_torch_keeps(engines, torch_fp32, sample_text):
    """Keep decisions at rate 0.33 on the bench documents: float32 ONNX,
    OpenVINO in float32 and bfloat16, and OpenVINO's static int8 agree with
    float32 torch on >= 99% of words; ONNX Runtime's dynamic int8 on >= 97%
    (measured: 98.1%, reported by `segpress bench`)."""
    texts = bench_texts(sample_text, 4)
    want = keep_decisions(torch_fp32, texts, 0.33)
    for name in ("onnx", "openvino-float32", "openvino-bfloat16", "openvino-int8"):
        assert agreement(want, keep_decisions(engines[name], texts, 0.33)) >= 0.99, name
    assert agreement(want, keep_decisions(engines["onnx-int8"], texts, 0.33)) >= 0.97


def test_every_engine_pools_the_sentence_vectors_torch_pools(engines, torch_fp32, sample_text):
    """Selection's default sentence vectors come out of the same graph as
    the keep scores (export.LOGITS_HIDDEN): on every engine they point where
    float32 torch's do (cosine per sentence, float16 vectors)."""
    import numpy as np

    texts = [s.text for s in torch_fp32.segment(bench_texts(sample_text, 2)[0])]
    want = np.concatenate([v["vectors"] for v in torch_fp32.encode_with_sentences(texts)[1]])
    want = want.astype(np.float32)
    # Measured (min / mean): float32 and bfloat16 0.9999 / 1.0, onnx-int8
    # 0.992 / 0.995, openvino-int8 0.9986 / 0.9989.
    floors = {"onnx": 0.999, "openvino-float32": 0.999, "openvino-bfloat16": 0.99,
              "onnx-int8": 0.98, "openvino-int8": 0.99}
    for name, floor in floors.items():
        got = np.concatenate([v["vectors"] for v in engines[name].encode_with_sentences(texts)[1]])
        cos = (got.astype(np.float32) * want).sum(1)
        assert cos.min() >= floor and cos.mean() >= (1 + floor) / 2, name


def test_each_engine_has_its_own_cache_identity(engines, torch_fp32, model_dir):
    bf16 = LLMLingua2(model_dir, dtype="bfloat16")
    ids = {torch_fp32.cache_id, bf16.cache_id} | {e.cache_id for e in engines.values()}
    assert len(ids) == 7
    assert all(i.startswith(torch_fp32.fingerprint + ":") for i in ids)
    assert torch_fp32.cache_id.endswith(":float32")  # torch keys are what they were


def test_export_is_made_once_and_made_again_when_damaged(engines, model_dir):
    path = ensure_onnx(model_dir, "int8") / "model.onnx"
    mtime = path.stat().st_mtime_ns
    assert ensure_onnx(model_dir, "int8") / "model.onnx" == path
    assert path.stat().st_mtime_ns == mtime  # reused, not exported again
    with open(path, "r+b") as f:  # one byte changed
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 1]))
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    again = ensure_onnx(model_dir, "int8") / "model.onnx"
    assert again.stat().st_mtime_ns != mtime + 10**9
    (r,) = LLMLingua2(model_dir, engine="onnx-int8").encode(["The keeper lit the lamp."])
    assert len(r["scores"]) == 6


def test_onnx_refuses_what_it_cannot_run(model_dir):
    with pytest.raises(ValueError, match="engine"):
        LLMLingua2(model_dir, engine="tensorrt")
    with pytest.raises(ValueError, match="need --engine torch"):
        LLMLingua2(model_dir, engine="onnx", dtype="bfloat16")
    with pytest.raises(ValueError, match="needs --engine torch"):
        LLMLingua2(model_dir, engine="openvino", device="cuda")
    with pytest.raises((ValueError, ModelError)):
        ensure_onnx(model_dir, "int4")


def test_engine_auto_is_openvino_int8_on_the_cpu_and_torch_where_that_fails(
        engines, model_dir, monkeypatch, caplog):
    from compressors import export
    from compressors.artifacts import ModelError

    auto = LLMLingua2(model_dir, dtype="auto", engine="auto")  # the int8 model is built already (the fixture)
    assert auto.engine.name == "openvino-int8" and auto.dtype == resolve_dtype("auto")
    # the same int8 model (the fixture's runs its float parts in float32)
    assert auto.cache_id.rsplit(":", 1)[0] == engines["openvino-int8"].cache_id.rsplit(":", 1)[0]

    def cannot_build(*args, **kwargs):  # what a read-only or unexportable checkpoint gives
        raise ModelError("cannot write the int8 model")

    monkeypatch.setattr(export, "ensure_openvino_int8", cannot_build)
    with caplog.at_level("WARNING", logger="compressors.engines"):
        fallback = LLMLingua2(model_dir, dtype="auto", engine="auto")
    assert fallback.engine.name == "torch" and "using torch" in caplog.text
    with pytest.raises(ModelError):  # asked for by name: no fallback
        LLMLingua2(model_dir, dtype="auto", engine="openvino-int8")


# -- the sentence embedder of query-aware selection --------------------------------


@pytest.fixture(scope="module")
def sentence_models(tmp_path_factory):
    from compressors.sentence_vectors import SentenceVectors

    into = tmp_path_factory.mktemp("sentence-onnx")
    return {engine: SentenceVectors(engine=engine, export_dir=into if engine != "torch" else None)
            for engine in ("torch", "onnx", "onnx-int8", "openvino")}


@pytest.mark.slow
def test_sentence_vectors_on_onnx_match_torch(sentence_models, sample_text):
    import numpy as np

    from compressors.segmenter import sentence_spans

    sentences = [sample_text[s:e] for s, e in sentence_spans(sample_text)]
    want = sentence_models["torch"]._embed(sentences)
    query = "What did the keeper record in his log?"
    for engine, min_cos in (("onnx", 0.9999), ("onnx-int8", 0.98), ("openvino", 0.999)):
        m = sentence_models[engine]
        got = m._embed(sentences)
        assert got.shape == want.shape
        assert (got * want).sum(1).min() >= min_cos
        assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
        # A sentence's vector does not depend on its batch.
        assert np.array_equal(np.stack([m._embed([s])[0] for s in sentences[:5]]), got[:5])
        if engine in ("onnx", "openvino"):  # the same ranking of the sentences for a question
            q, q_want = m.query(query), sentence_models["torch"].query(query)
            assert np.argsort(-(got @ q))[:5].tolist() == np.argsort(-(want @ q_want))[:5].tolist()
    ids = {m.cache_id for m in sentence_models.values()}
    assert len(ids) == 4 and sentence_models["torch"].cache_id.endswith(":float16")


def test_sentence_vectors_refuse_unknown_engine():
    from compressors.sentence_vectors import SentenceVectors

    with pytest.raises(ValueError, match="engine"):
        SentenceVectors(engine="tensorrt")


def test_pipeline_with_engine_onnx(model_dir, redis_proc, tmp_path, sample_text):
    """--engine onnx --sentence-engine onnx end to end: both models on ONNX
    Runtime (the sentence model's export under --cache-dir/models), a query
    request cold then cached gives the same response."""
    import asyncio

    from segpress import SegpressClient
    from service.config import Config
    from service.assemble import open_pipeline

    config = Config(engine="onnx", sentence_engine="onnx", llmlingua2_model=model_dir,
                    cache_dir=str(tmp_path), redis_url=redis_proc.url)
    req = SegpressClient.request(sample_text.split("\n\n"), rate=0.33, namespace=f"onnx-{tmp_path.name}",
                                 query="What did the keeper record in his log?")

    async def run():
        pipeline, close = await open_pipeline(config)
        try:
            return [await pipeline.compress(req) for _ in range(2)], pipeline
        finally:
            await close()

    (cold, warm), pipeline = asyncio.run(run())
    assert pipeline.compressors["llmlingua2"].cache_id.endswith(":onnx")
    # Sentence vectors pooled from the classifier's ONNX pass; the query's
    # embedding from the sentence model on ONNX Runtime.
    assert pipeline.selector.cache_id.endswith(":onnx:pooled1:float16")
    assert pipeline.selector.queries.cache_id.endswith(":onnx:w8:float16")
    assert (tmp_path / "models" / "all-minilm-l6-v2" / "onnx-float32" / "model.onnx").is_file()
    assert cold.text == warm.text and cold.text
    assert warm.stats.cache_misses == 0 and warm.stats.sentence_vector_hits == warm.stats.segments

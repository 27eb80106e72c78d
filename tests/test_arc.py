"""The arc compressor: in process, on a real server with Redis, and a tiny real
training run. The weights here are freshly initialised ones (what training
starts from), so these tests do not depend on the shipped weights; the
shipped weights' quality is `segpress eval arc`'s job."""


import grpc
import numpy as np
import pytest

from compressors import models
from service.config import Config

from conftest import ServerProcess
from helpers import train_stopped_and_resumed

pytestmark = pytest.mark.slow  # loads SmolLM2

CONTEXTS = [
    "The lighthouse on Skarv Island was built in 1874. Its keeper, Ingrid Dahl, kept a "
    "logbook of every ship that passed. In the winter of 1902 a storm destroyed the old lamp. " * 3,
    "A second, shorter context about bread: flour, water, salt and time.",
]


@pytest.fixture(scope="module")
def decoder_dir():
    return models.ensure_smollm2(Config().models_dir)


@pytest.fixture(scope="module")
def weights(decoder_dir, tmp_path_factory):
    """Untrained arc weights (seeded LoRA, identity projector) for this decoder."""
    import torch

    from compressors.arc_model import load_model

    torch.manual_seed(0)
    model, _ = load_model(decoder_dir, None)
    path = tmp_path_factory.mktemp("arc") / "arc.safetensors"
    model.save(path, {"decoder": models.SMOLLM2, "decoder_fingerprint": models.fingerprint(decoder_dir)})
    return path


@pytest.fixture(scope="module")
def arc(decoder_dir, weights):
    from compressors.arc import Arc

    return Arc(decoder_dir, weights, dtype="float32")


@pytest.fixture(scope="module")
def server(redis_proc, weights):
    s = ServerProcess({
        "SEGPRESS_REDIS_URL": redis_proc.url,
        "SEGPRESS_CACHE_DIR": Config().cache_dir,  # for the shared models; Redis is redis_proc
        "SEGPRESS_COMPRESSORS": "llmlingua2,arc",
        "SEGPRESS_ARC_WEIGHTS": str(weights),
    })
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    from segpress import SegpressClient

    with SegpressClient(server.target, timeout_s=120) as c:
        yield c


# -- the compressor in process --------------------------------------------------


def test_encode_has_every_factor_and_does_not_depend_on_the_batch(arc):
    segs = arc.segment(CONTEXTS[0])
    assert len(segs) > 1 and all(s.n_tokens <= 128 for s in segs)
    enc = arc.encode([s.text for s in segs])
    for s, e in zip(segs, enc):
        n = len(arc.tokenizer(s.text, add_special_tokens=False)["input_ids"])
        assert set(e) == {"x4", "x8"}
        assert e["x4"].shape == (-(-n // 4), 576) and e["x8"].shape == (-(-n // 8), 576)
        assert e["x4"].dtype == np.float32 and np.isfinite(e["x4"]).all()
        assert arc.check_encoded(e, s)
    # The same rows alone as batched: the padding is fixed, so only float
    # rounding differs (on some CPUs a float32 matmul's threads split the
    # work by batch size: ~1e-6 here, far below what the cache's float16
    # or a reader could tell apart).
    alone = arc.encode([segs[-1].text])[0]
    assert all(np.allclose(alone[k], enc[-1][k], rtol=0, atol=1e-5) for k in alone)
    assert not arc.check_encoded({"x4": enc[0]["x4"]}, segs[0])  # a factor missing
    assert not arc.check_encoded(enc[1], segs[0])  # another segment's rows


def test_render_ends_each_context_with_the_cont_row(arc):
    from compressors.base import ContextParts

    parts = [ContextParts(t, segs, arc.encode([s.text for s in segs]))
             for t in CONTEXTS for segs in [arc.segment(t)]]
    for factor in (4, 8):
        out = arc.render(parts, arc.Params(pooling_factor=factor))
        for p, r in zip(parts, out):
            rows = [e[f"x{factor}"] for e in p.encoded]
            assert r.segment_rows == [len(x) for x in rows[:-1]] + [len(rows[-1]) + 1]
            assert np.array_equal(r.tensor[:-1], np.concatenate(rows))
            assert np.array_equal(r.tensor[-1], arc.model.cont.detach().numpy())
            assert r.compressed_tokens == len(r.tensor) == sum(r.segment_rows)
    assert len(arc.render(parts, arc.Params(pooling_factor=8))[0].tensor) < \
        len(arc.render(parts, arc.Params(pooling_factor=4))[0].tensor)


def test_bad_params_name_the_field(arc):
    from compressors.base import InvalidParams

    for params, words in ((arc.Params(pooling_factor=3), ["arc.pooling_factor", "4, 8"]),
                          (arc.Params(decoder="llama"), ["arc.decoder", models.SMOLLM2])):
        with pytest.raises(InvalidParams) as e:
            arc.check_params(params)
        assert all(w in str(e.value) for w in words)
    with pytest.raises(InvalidParams, match="arc.output_dtype"):
        arc.Params(output_dtype="int8").check()


def test_the_decoder_reads_the_rows(arc, decoder_dir):
    """The client helpers feed arc's tensor to the decoder like complm's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compressors.base import ContextParts
    from segpress.soft_tokens import generate, inputs_embeds
    from segpress.tensors import from_numpy

    segs = arc.segment(CONTEXTS[1])
    r = arc.render([ContextParts(CONTEXTS[1], segs, arc.encode([s.text for s in segs]))], arc.Params())[0]
    tok = AutoTokenizer.from_pretrained(decoder_dir)
    model = AutoModelForCausalLM.from_pretrained(decoder_dir, dtype=torch.float32)
    t = from_numpy(r.tensor, "float32", np.concatenate([[0], np.cumsum(r.segment_rows)]))
    e = inputs_embeds(t, model, tok, "Text:\n{context}\n\nWhat is the text about?")
    assert e.shape[1] > len(r.tensor) and e.shape[2] == 576
    assert isinstance(generate(t, model, tok, "Text:\n{context}\n\nWhat is it about?", max_new_tokens=3), str)


# -- a real server ------------------------------------------------------------------


def test_served_rows_are_cached_per_segment_for_every_factor(client, arc):
    from segpress import pb
    from segpress.tensors import context_rows, to_numpy

    ns = "arc-repeat"
    first = client.compress(CONTEXTS, compressor="arc", namespace=ns)
    t = first.tensor
    assert first.compressor == "arc" and t.dtype == pb.DTYPE_FLOAT32 and t.shape[1] == 576
    assert t.decoder_id == models.SMOLLM2 and t.decoder_fingerprint == arc.decoder_fingerprint
    assert first.stats.cache_misses == first.stats.segments >= 3 and first.stats.cache_hits == 0
    # Each context's rows end with the <Cont> row; offsets tile the tensor.
    cont = arc.model.cont.detach().numpy()
    for i in range(len(CONTEXTS)):
        rows = context_rows(first, i)
        assert np.allclose(rows[-1], cont, atol=1e-2)  # the server may run bfloat16
    assert list(t.segment_offsets)[-1] == t.shape[0] == sum(c.compressed_tokens for c in first.contexts)

    again = client.compress(CONTEXTS, compressor="arc", namespace=ns)
    assert again.stats.cache_hits == again.stats.segments and again.stats.cache_misses == 0
    assert again.tensor.data == t.data and list(again.tensor.segment_offsets) == list(t.segment_offsets)
    # Another factor is read from the same cached values: all hits, fewer rows.
    x8 = client.compress(CONTEXTS, compressor="arc", pooling_factor=8, namespace=ns)
    assert x8.stats.cache_hits == x8.stats.segments and x8.tensor.shape[0] < t.shape[0]
    f16 = client.compress(CONTEXTS, compressor="arc", output_dtype="float16", namespace=ns)
    assert f16.tensor.dtype == pb.DTYPE_FLOAT16
    assert np.array_equal(to_numpy(f16.tensor), to_numpy(t).astype(np.float16))


def test_info_lists_factors_and_decoder(client, arc):
    from segpress import pb

    c = {c.name: c for c in client.info().compressors}["arc"]
    assert c.output == pb.OUTPUT_KIND_SOFT_TOKENS and c.max_segment_tokens == 128
    assert list(c.pooling_factors) == [4, 8]
    assert c.decoder.id == models.SMOLLM2 and c.decoder.fingerprint == arc.decoder_fingerprint
    assert c.model.fingerprint == arc.fingerprint
    assert list({c.name: c for c in client.info().compressors}["llmlingua2"].pooling_factors) == []


def test_bad_requests_are_invalid_argument(client):
    from segpress import SegpressError

    for kwargs, words in (({"pooling_factor": 5}, ["arc.pooling_factor", "4, 8"]),
                          ({"decoder": "meta-llama/Llama-3.1-8B"}, ["arc.decoder"]),
                          ({"rate": 0.5}, [])):
        with pytest.raises(SegpressError) as e:
            client.compress(CONTEXTS[:1], compressor="arc", **kwargs)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert all(w in e.value.details for w in words), e.value.details
    assert client.compress(CONTEXTS[:1], compressor="arc").tensor.shape[0] > 0  # still serving


# -- training ---------------------------------------------------------------------


def test_tiny_training_run_resumes_and_writes_weights_and_card(tmp_path):
    """Real steps of `segpress train arc` on the essays: a run killed after its
    first checkpoint resumes from it; weights and card are written and load."""
    from safetensors.torch import load_file

    out = tmp_path / "arc.safetensors"
    args = ("train", "arc", "--steps", "4", "--batch-size", "2", "--ctx-min", "16", "--ctx-max", "40",
            "--continuation", "4", "--dev-examples", "2", "--layers", "2", "--rank", "4",
            "--checkpoint-every", "2", "--corpus", "essays", "--out", str(out),
            "--cache-dir", Config().cache_dir)
    card = train_stopped_and_resumed(args, out)
    assert set(card["dev_after"]) >= {"x4", "x8", "loss_full", "loss_none"}
    state = load_file(str(out))
    assert len([k for k in state if k.startswith("lora.")]) == 2 * 7 * 2 and "task.cont" in state


def test_full_training_trains_copies_of_the_blocks_and_round_trips(decoder_dir, tmp_path):
    """Rank 0 (`segpress train arc --rank 0`): the encoder's blocks are copies
    of the decoder's, trained in full. A step changes them and leaves the
    decoder that reads the rows as it was; the saved weights hold the blocks
    and load back to the same rows."""
    import torch

    from compressors.arc_model import ArcConfig, load_model

    torch.manual_seed(0)
    model, tok = load_model(decoder_dir, None, config=ArcConfig(layers=2, rank=0))
    assert not model.loras and model.blocks[0] is not model.decoder.model.layers[0]
    decoder_before = model.decoder.model.layers[0].mlp.up_proj.weight.clone()
    block_before = model.blocks[0].mlp.up_proj.weight.clone()
    segment = tok(CONTEXTS[1])["input_ids"]
    opt = torch.optim.SGD(model.trainable(), lr=1e-3)
    model.rows([segment])[4][0].pow(2).sum().backward()
    opt.step()
    assert not torch.equal(model.blocks[0].mlp.up_proj.weight, block_before)
    assert torch.equal(model.decoder.model.layers[0].mlp.up_proj.weight, decoder_before)

    path = tmp_path / "full.safetensors"
    model.save(path, {})
    again, _ = load_model(decoder_dir, path)
    assert again.config.rank == 0 and not again.loras
    with torch.no_grad():
        want, got = model.rows([segment])[4][0], again.rows([segment])[4][0]
    assert torch.allclose(got, want, atol=0.02), (got - want).abs().max()  # saved in float16


def test_mean_start_rows_are_their_tokens_mean_embedding_before_training(decoder_dir):
    """Start "mean" (`segpress train arc --start mean`): before training, each
    row is the mean input embedding of the x tokens it stands for, at the
    embeddings' RMS; the projector (zero at first) learns what to add."""
    import torch

    from compressors.arc_model import ArcConfig, load_model

    model, tok = load_model(decoder_dir, None, config=ArcConfig(layers=2, start="mean"))
    segment = tok(CONTEXTS[1])["input_ids"]
    with torch.no_grad():
        rows = model.rows([segment])
        e = model.embed(torch.tensor(segment))  # [n, D]
    for f in (4, 8):
        assert rows[f][0].shape == (-(-len(segment) // f), e.shape[1])
        for g in range(len(rows[f][0])):
            mean = e[g * f : (g + 1) * f].mean(0)
            want = mean * model.embed_rms / mean.pow(2).mean().sqrt()
            assert torch.allclose(rows[f][0][g], want, atol=1e-5), (f, g)


def test_causal_encoder_rows_do_not_see_later_tokens(decoder_dir):
    """`--causal 1` keeps the decoder's causal mask in the encoder: the rows
    of a segment's first groups are the same whatever follows them; without
    it (ARC's choice, the default) they change."""
    import torch

    from compressors.arc_model import ArcConfig, load_model

    segment = CONTEXTS[0]
    for causal in (True, False):
        torch.manual_seed(0)
        model, tok = load_model(decoder_dir, None, config=ArcConfig(layers=2, causal=causal))
        ids = tok(segment)["input_ids"][:24]
        with torch.no_grad():
            whole, prefix = model.rows([ids])[4][0], model.rows([ids[:8]])[4][0]  # [6, D], [2, D]
        assert torch.equal(whole[:2], prefix) == causal

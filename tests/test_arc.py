"""The arc compressor (complm's CEs pooled): the math, in process, on a real
server with Redis, and a tiny real training run. Most tests use the warm
start (complm's shipped weights with untrained pooling parts, what `segpress
train arc` starts from), so they hold for any arc weights; one reads the
shipped arc weights' rows with the decoder and checks only that they carry
their own text (their measured quality is `segpress eval arc`'s job)."""


import itertools

import grpc
import numpy as np
import pytest

from compressors import artifacts, models
from service.config import Config

from conftest import ServerProcess
from helpers import train_stopped_and_resumed

pytestmark = pytest.mark.slow  # loads SmolLM2

CONTEXTS = [
    "The lighthouse on Skarv Island was built in 1874. Its keeper, Ingrid Dahl, kept a "
    "logbook of every ship that passed. In the winter of 1902 a storm destroyed the old lamp. " * 3,
    "A second, shorter context about bread: flour, water, salt and time.",
]
FACTORS = (2, 4, 8)


@pytest.fixture(scope="module")
def decoder_dir():
    return models.ensure_smollm2(Config().models_dir)


@pytest.fixture(scope="module")
def warm(decoder_dir):
    """(ArcModel, tokenizer): the warm start, unfolded (trainable)."""
    from compressors.arc_model import load_model

    return load_model(decoder_dir, None)


@pytest.fixture(scope="module")
def weights(warm, decoder_dir, tmp_path_factory):
    """The warm start saved as arc weights for this decoder."""
    path = tmp_path_factory.mktemp("arc") / "arc.safetensors"
    warm[0].save(path, {"decoder": models.SMOLLM2, "decoder_fingerprint": artifacts.fingerprint(decoder_dir)})
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
        "SEGPRESS_WEIGHTS": f"arc={weights}",
    })
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    from segpress import SegpressClient

    with SegpressClient(server.target, timeout_s=120) as c:
        yield c


# -- the model ----------------------------------------------------------------------


def test_untrained_rows_are_complms_ces_averaged_and_one_pass_serves_every_factor(warm, weights):
    """Before training, a row at factor x is the mean of x / 2 adjacent CEs
    of complm (the free baseline); rows_every_factor (one encoder pass) gives
    the same rows as one call per factor, and a batch that mixes factors
    (training) gives each segment the rows of its own factor."""
    import torch

    model, tok = warm
    segs = [tok(t, add_special_tokens=False)["input_ids"][:37] for t in CONTEXTS]  # 37 and 15 tokens
    with torch.no_grad():
        ces = model.complm.concept_embeddings(segs)  # [19, D], [8, D]
        every = model.rows_every_factor(segs)
        mixed = model.rows(segs, [8, 2])
    assert sorted(every) == list(FACTORS)
    for f in FACTORS:
        g = f // 2
        for s, ce, rows in zip(segs, ces, every[f]):
            assert rows.shape == (model.n_rows(len(s), f), 576) == (-(-len(s) // f), 576)
            want = torch.stack([ce[r * g : (r + 1) * g].mean(0) for r in range(len(rows))])
            assert torch.allclose(rows, want, atol=1e-5), f
    assert torch.equal(mixed[0], every[8][0]) and torch.equal(mixed[1], every[2][1])


def test_old_arc_weights_are_refused_with_a_clear_error(tmp_path, decoder_dir):
    """Weights of the 6-block ARC encoder (before arc was built on complm)."""
    import torch
    from safetensors.torch import save_file

    from compressors.arc_model import load_model

    old = tmp_path / "old-arc.safetensors"
    save_file({"proj_in.weight": torch.zeros(2, 2)}, str(old),
              metadata={"config": '{"factors": [4, 8], "layers": 6, "rank": 64, "segment_tokens": 128}'})
    with pytest.raises(ValueError, match="not arc weights of this version"):
        load_model(decoder_dir, old)


# -- the compressor in process --------------------------------------------------


def rows_at(arc, text: str, f: int) -> int:
    """A segment's rows at factor f: ceil(n / f) for each run of n tokens
    that are not digits, one per digit (digits pass verbatim)."""
    ids = arc.tokenizer(text, add_special_tokens=False)["input_ids"]
    runs = [(digit, len(list(run))) for digit, run in
            itertools.groupby(ids, key=lambda i: arc.tokenizer.decode([i]).isdigit())]
    return sum(n if digit else -(-n // f) for digit, n in runs)


def test_training_makes_the_rows_the_server_serves(warm, arc):
    """Training's encoder cuts segments at their digits as the server does,
    each segment at the factor drawn for it."""
    import torch

    from compressors.arc import rows_name
    from compressors.training import soft, train_arc

    model, tok = warm
    texts = ["Room 12 opens with code 9224, not 13.", CONTEXTS[1]]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    with torch.no_grad():
        rows = train_arc.encoder(model, soft.verbatim_ids(tok, True), [8, 4].__getitem__)(ids)
    served = arc.encode(texts)
    assert rows[0].shape[0] == rows_at(arc, texts[0], 8) > -(-len(ids[0]) // 8)
    np.testing.assert_allclose(rows[0].numpy(), served[0][rows_name(8)], atol=1e-4)
    np.testing.assert_allclose(rows[1].numpy(), served[1][rows_name(4)], atol=1e-4)


def test_names_pass_verbatim_at_every_factor_when_asked(arc):
    """A verbatim_names variant (cached apart) gives each token of a name one
    row, the decoder's input embedding, at every factor."""
    text = "The keeper, Ingrid Dahl, sailed to Lisbon in 1902."
    [seg] = arc.segment(text)
    named = arc.variant(arc.Params(verbatim_names=True))
    assert named.cache_id == arc.cache_id + ":names"
    runs = named.runs(arc.ids(text))
    assert [arc.tokenizer.decode(run) for v, run in runs if v] == [" Ingrid Dahl", " Lisbon", "1902"]
    value = named.encode([text])[0]
    assert named.check_encoded(value, seg) and not arc.check_encoded(value, seg)
    E = arc.model.embed.weight.detach().float().numpy()
    for f in FACTORS:
        rows, at = value[f"x{f}"], 0
        assert rows.shape[0] == sum(len(r) if v else -(-len(r) // f) for v, r in runs) > rows_at(arc, text, f)
        for v, run in runs:
            n = len(run) if v else -(-len(run) // f)
            if v:
                np.testing.assert_array_equal(rows[at:at + n], E[run])
            at += n


def test_encode_has_every_factor_and_does_not_depend_on_the_batch(arc):
    assert arc.pooling_factors == FACTORS and arc.max_segment_tokens == 40
    segs = arc.segment(CONTEXTS[0])
    assert len(segs) > 1 and all(s.n_tokens <= 40 for s in segs)
    enc = arc.encode([s.text for s in segs])
    for s, e in zip(segs, enc):
        assert set(e) == {"x2", "x4", "x8"}
        for f in FACTORS:
            assert e[f"x{f}"].shape == (rows_at(arc, s.text, f), 576)
            assert e[f"x{f}"].dtype == np.float32 and np.isfinite(e[f"x{f}"]).all()
        assert arc.check_encoded(e, s)
    # The same rows alone as batched: the padding is fixed, so only float
    # rounding differs (on some CPUs a float32 matmul's threads split the
    # work by batch size: ~1e-6 here, far below what the cache's float16
    # or a reader could tell apart).
    alone = arc.encode([segs[-1].text])[0]
    assert all(np.allclose(alone[k], enc[-1][k], rtol=0, atol=1e-5) for k in alone)
    assert not arc.check_encoded({k: enc[0][k] for k in ("x4", "x8")}, segs[0])  # a factor missing
    short = arc.segment(CONTEXTS[1])[0]
    assert not arc.check_encoded(arc.encode([short.text])[0], segs[0])  # a shorter segment's rows


def test_render_ends_each_context_with_the_cont_row(arc):
    from compressors.base import ContextParts

    cont = arc.model.task("cont").detach().numpy()
    parts = [ContextParts(t, segs, arc.encode([s.text for s in segs]))
             for t in CONTEXTS for segs in [arc.segment(t)]]
    lengths = []
    for factor in FACTORS:
        out = arc.render(parts, arc.Params(pooling_factor=factor))
        for p, r in zip(parts, out):
            rows = [e[f"x{factor}"] for e in p.encoded]
            assert r.segment_rows == [len(x) for x in rows[:-1]] + [len(rows[-1]) + 1]
            assert np.array_equal(r.tensor[:-1], np.concatenate(rows))
            assert np.array_equal(r.tensor[-1], cont)
            assert r.compressed_tokens == len(r.tensor) == sum(r.segment_rows)
            # what the pipeline checks the response size by, before encoding
            params = arc.Params(pooling_factor=factor)
            assert sum(arc.rows(s, params) for s in p.segments) + arc.end_rows() == len(r.tensor)
        lengths.append(len(out[0].tensor))
    assert lengths == sorted(lengths, reverse=True) and lengths[0] > lengths[-1]


def test_bad_params_name_the_field(arc):
    from compressors.base import InvalidParams

    for params, words in ((arc.Params(pooling_factor=3), ["arc.pooling_factor", "2, 4, 8"]),
                          (arc.Params(pooling_factor=16), ["arc.pooling_factor", "0 means 4"]),
                          (arc.Params(decoder="llama"), ["arc.decoder", models.SMOLLM2])):
        with pytest.raises(InvalidParams) as e:
            arc.check_params(params)
        assert all(w in str(e.value) for w in words)
    with pytest.raises(InvalidParams, match="arc.output_dtype"):
        arc.Params(output_dtype="int8").check()


# Contexts whose continuations repeat what only the context says.
READ = [
    ("The lighthouse on Skarv Island was built in 1874. Its keeper, Ingrid Dahl, kept a logbook of every "
     "ship that passed. In the winter of 1902 a storm destroyed the old lamp, and Ingrid Dahl rowed to the "
     "mainland for a new one.",
     " When the new lamp was lit on Skarv Island, Ingrid Dahl wrote in her logbook that the storm of 1902 "
     "was over."),
    ("To bake the rye bread, mix four cups of rye flour with two cups of warm water, a spoon of salt and the "
     "sourdough starter. Let the dough rise overnight in a cool kitchen, then shape it into a round loaf.",
     " Bake the rye loaf for fifty minutes, until the crust is dark and the bread sounds hollow when you "
     "tap it."),
    ("The Python function sorted takes an iterable and returns a new list. Its key argument is a function of "
     "one argument that extracts a comparison key from each element, and reverse=True sorts in descending "
     "order.",
     " For example, sorted(words, key=len, reverse=True) returns the words from the longest to the shortest."),
]


def test_the_decoder_reads_the_shipped_rows(decoder_dir):
    """The shipped weights load (their decoder fingerprint is this
    decoder's), and at every factor the unchanged decoder predicts each
    context's continuation better from that context's rows than from
    another context's rows; the client helpers put the rows into a prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    from compressors.arc import Arc
    from compressors.base import ContextParts
    from compressors.training.soft import decoder_loss
    from segpress.soft_tokens import inputs_embeds
    from segpress.tensors import from_numpy

    arc = Arc(decoder_dir)  # the shipped weights
    assert 4 in arc.pooling_factors
    reader = AutoModelForCausalLM.from_pretrained(decoder_dir, dtype=torch.float32)
    tok, E = arc.tokenizer, reader.get_input_embeddings()
    eot = E(torch.tensor([tok.convert_tokens_to_ids("<|endoftext|>")]))
    parts = [ContextParts(c, segs, arc.encode([s.text for s in segs])) for c, _ in READ for segs in [arc.segment(c)]]
    targets = [tok(cont, add_special_tokens=False)["input_ids"] for _, cont in READ]
    for f in arc.pooling_factors:
        rows = [torch.from_numpy(r.tensor) for r in arc.render(parts, arc.Params(pooling_factor=f))]
        with torch.no_grad():
            own = decoder_loss(reader, [torch.cat([eot, r]) for r in rows], targets)[1]
            other = decoder_loss(reader, [torch.cat([eot, r]) for r in rows[1:] + rows[:1]], targets)[1]
        assert (own < other).all(), (f, own.tolist(), other.tolist())
    r = arc.render(parts[:1], arc.Params())[0]
    t = from_numpy(r.tensor, "float32", np.concatenate([[0], np.cumsum(r.segment_rows)]))
    e = inputs_embeds(t, reader, tok, "Text:\n{context}\n\nWho kept the lighthouse?")
    assert e.shape[1] > len(r.tensor) and e.shape[2] == 576


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
    cont = arc.model.task("cont").detach().numpy()
    for i in range(len(CONTEXTS)):
        rows = context_rows(first, i)
        assert np.allclose(rows[-1], cont, atol=1e-2)  # the server may run bfloat16
    assert list(t.segment_offsets)[-1] == t.shape[0] == sum(c.compressed_tokens for c in first.contexts)

    again = client.compress(CONTEXTS, compressor="arc", namespace=ns)
    assert again.stats.cache_hits == again.stats.segments and again.stats.cache_misses == 0
    assert again.tensor.data == t.data and list(again.tensor.segment_offsets) == list(t.segment_offsets)
    # Every factor is read from the same cached values: all hits, each
    # segment with its rows at that factor (the <Cont> row with the last).
    for f in FACTORS:
        r = first if f == 4 else client.compress(CONTEXTS, compressor="arc", pooling_factor=f, namespace=ns)
        assert f == 4 or (r.stats.cache_hits == r.stats.segments and r.stats.cache_misses == 0)
        want = []
        for c in CONTEXTS:
            n = [rows_at(arc, s.text, f) for s in arc.segment(c)]
            want += n[:-1] + [n[-1] + 1]
        assert np.diff(list(r.tensor.segment_offsets)).tolist() == want, f
    f16 = client.compress(CONTEXTS, compressor="arc", output_dtype="float16", namespace=ns)
    assert f16.tensor.dtype == pb.DTYPE_FLOAT16
    assert np.array_equal(to_numpy(f16.tensor), to_numpy(t).astype(np.float16))


def test_info_lists_factors_and_decoder(client, arc):
    from segpress import pb

    c = {c.name: c for c in client.info().compressors}["arc"]
    assert c.output == pb.OUTPUT_KIND_SOFT_TOKENS and c.max_segment_tokens == 40
    assert list(c.pooling_factors) == list(FACTORS)
    assert c.decoder.id == models.SMOLLM2 and c.decoder.fingerprint == arc.decoder_fingerprint
    assert c.model.fingerprint == arc.fingerprint
    assert list({c.name: c for c in client.info().compressors}["llmlingua2"].pooling_factors) == []


def test_bad_requests_are_invalid_argument(client):
    from segpress import SegpressError

    for kwargs, words in (({"pooling_factor": 5}, ["arc.pooling_factor", "2, 4, 8"]),
                          ({"decoder": "meta-llama/Llama-3.1-8B"}, ["arc.decoder"]),
                          ({"rate": 0.5}, [])):
        with pytest.raises(SegpressError) as e:
            client.compress(CONTEXTS[:1], compressor="arc", **kwargs)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert all(w in e.value.details for w in words), e.value.details
    assert client.compress(CONTEXTS[:1], compressor="arc").tensor.shape[0] > 0  # still serving


# -- training ---------------------------------------------------------------------


def test_tiny_training_run_resumes_and_writes_weights_and_card(tmp_path, decoder_dir):
    """Real steps of `segpress train arc` on the essays, from complm's
    shipped weights, mixed factors and distillation on: a run killed after
    its first checkpoint resumes from it; weights and card are written, and
    the weights load and serve every factor."""
    import torch

    from compressors.arc_model import load_model

    out = tmp_path / "arc.safetensors"
    args = ("train", "arc", "--steps", "4", "--batch-size", "2", "--ctx-min", "16", "--ctx-max", "40",
            "--continuation", "4", "--dev-examples", "2", "--distill", "0.5", "--checkpoint-every", "2",
            "--corpus", "essays", "--out", str(out), "--cache-dir", Config().cache_dir)
    card = train_stopped_and_resumed(args, out)
    assert set(card["dev_after"]) >= {"x2", "x4", "x8", "loss_full", "loss_none"}
    assert card["init"]["complm_weights"] == "compressors/weights/complm-smollm2-135m.safetensors"
    assert card["config"]["distill"] == 0.5 and card["model"]["factors"] == list(FACTORS)
    model, tok = load_model(decoder_dir, out)
    assert model.config.factors == FACTORS
    seg = tok(CONTEXTS[1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        rows = model.rows_every_factor([seg])
    assert all(rows[f][0].shape == (model.n_rows(len(seg), f), 576) for f in FACTORS)
    assert model.proj_out.weight.abs().sum() > 0  # trained away from the warm start's zero

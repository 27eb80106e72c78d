"""Model management: pulling is idempotent, damage is refused with the fix
named, fingerprints are the sha256 of the weights."""

import hashlib
import json
import shutil

import pytest
from helpers import segpress

from compressors import artifacts, models

# Every test here assembles model files (MiniLM and the shipped layers).
pytestmark = pytest.mark.slow


def test_default_llmlingua2_is_assembled_once_and_damage_names_the_fix(tmp_path):
    path = models.ensure_default_llmlingua2(tmp_path)
    weights = path / "model.safetensors"
    built = weights.stat().st_mtime_ns
    assert models.ensure_default_llmlingua2(tmp_path) == path
    assert weights.stat().st_mtime_ns == built  # the second call did nothing

    manifest = json.loads((path / artifacts.MANIFEST).read_text())
    assert manifest["fingerprint"] == artifacts.fingerprint(path)
    assert manifest["files"]["model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    with open(weights, "r+b") as f:  # flip one byte
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(artifacts.ModelError, match="segpress models pull"):
        models.ensure_default_llmlingua2(tmp_path)
    shutil.rmtree(path)  # what `segpress models pull` does with a damaged model
    models.ensure_default_llmlingua2(tmp_path)
    assert json.loads((path / artifacts.MANIFEST).read_text())["fingerprint"] == manifest["fingerprint"]
    (path / "tokenizer.json").unlink()
    with pytest.raises(artifacts.ModelError, match="tokenizer.json is missing.*segpress models pull"):
        artifacts.verify(path)


@pytest.mark.skipif(not models.DEFAULT_LLMLINGUA2_WEIGHTS.exists(), reason="no trained weights yet")
def test_shipped_weights_replace_the_top_layers_and_head(tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForTokenClassification

    trained = load_file(str(models.DEFAULT_LLMLINGUA2_WEIGHTS))
    assert any(k.startswith("classifier.") for k in trained)
    assert models.DEFAULT_LLMLINGUA2_WEIGHTS.stat().st_size < 16 << 20
    model = AutoModelForTokenClassification.from_pretrained(models.ensure_default_llmlingua2(tmp_path))
    state = model.state_dict()
    for k, v in trained.items():
        assert torch.equal(state[k], v.to(state[k].dtype)), k


def test_pull_list_and_pull_again(tmp_path):
    """`models pull` on the shared cache (SmolLM2 is converted once per
    machine), then again: nothing to do, the same fingerprints."""
    first = segpress("models", "pull", "--json")
    assert first.returncode == 0, first.stderr
    rows = {r["name"]: r for r in json.loads(first.stdout)}
    assert set(rows) >= {models.MINILM, models.SMOLLM2}
    assert all(r["state"] == "ok" and len(r["fingerprint"]) == 64 for r in rows.values())
    smol = rows[models.SMOLLM2]
    assert smol["fingerprint"] == artifacts.fingerprint(smol["path"])
    listed = segpress("models", "list", "--json")
    assert json.loads(listed.stdout) == json.loads(first.stdout)
    again = segpress("models", "pull", "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == json.loads(first.stdout)


def test_list_reports_a_missing_model(tmp_path):
    r = segpress("models", "list", "--cache-dir", str(tmp_path))
    assert r.returncode == 1
    assert "missing" in r.stdout and models.SMOLLM2 in r.stdout

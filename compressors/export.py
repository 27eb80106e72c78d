"""Exports that other engines run: ONNX graphs and int8 quantisations.

Made from a checkpoint on first use, into a directory with a manifest like
every built model (artifacts.ensure), and reused while the checkpoint's
fingerprint and the tools' versions are the same.
"""

import contextlib
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from .artifacts import ModelError, damage, ensure, fingerprint, sha256

ONNX_OPSET = 17
ONNX_QUANTIZATIONS = ("float32", "int8")
LOGITS_HIDDEN = "logits_hidden"
# task -> (transformers class, output). "token-classification-hidden": the
# classifier's logits [.., 2] and its last hidden states [.., hidden] in one
# array [.., 2 + hidden], so one pass gives keep scores and sentence vectors.
ONNX_TASKS = {"token-classification": ("AutoModelForTokenClassification", "logits"),
              "token-classification-hidden": ("AutoModelForTokenClassification", LOGITS_HIDDEN),
              "feature-extraction": ("AutoModel", "last_hidden_state")}


def model_output(model, output: str, input_ids, attention_mask):
    """`output` of a transformers model's forward pass (see ONNX_TASKS)."""
    import torch

    if output == LOGITS_HIDDEN:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return torch.cat([out.logits, out.hidden_states[-1]], -1)  # [batch, width, 2 + hidden]
    return getattr(model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False), output)


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
    if out.exists() and damage(out):  # derived from the checkpoint: made again
        shutil.rmtree(out)
    try:
        return ensure(out, source, build, suffixes=(".onnx",))
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
        want = _used(output, model_output(model, output, probe, probe_mask), probe_mask)
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
            return model_output(self.model, output, input_ids, attention_mask)

    return ByName()


def _used(output: str, raw, mask):
    """What segpress reads of a model's output, compared by the export's
    probe: keep probabilities of real tokens, or unit mean-pooled vectors."""
    import torch

    if output == LOGITS_HIDDEN:
        return torch.cat([_used("logits", raw[..., :2], mask).flatten(),
                          _used("last_hidden_state", raw[..., 2:], mask).flatten()])
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
                         calibration: Callable[[], list[dict]],
                         task: str = "token-classification") -> Path:
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
    fp32 = ensure_onnx(model_dir, "float32", model_fingerprint, task) / "model.onnx"
    source = {"model_fingerprint": model_fingerprint, "quantization": "int8-static",
              "calibration_sha256": sha256(CALIBRATION_TEXT), "float": list(OPENVINO_INT8_FLOAT),
              "openvino": openvino.__version__, "nncf": nncf.__version__}
    if task != "token-classification":
        source["task"] = task

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
        return ensure(model_dir / "openvino-int8", source, build, suffixes=(".xml", ".bin"))
    except OSError as e:
        raise ModelError(f"cannot write the int8 model into {model_dir} ({e}); use a writable "
                         f"copy of the checkpoint, or another engine") from e

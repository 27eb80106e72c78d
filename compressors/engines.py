"""What runs an encoder's forward pass: torch, ONNX Runtime or OpenVINO.

A model that uses an engine (LLMLingua2's token classifier, selection's
sentence encoder) hands it token ids and an attention mask and gets numpy
back; it never knows which runtime ran them. Each engine says what a cache
identity must add for it (`tag`: the runtime, its quantisation, its
precision, since each gives slightly different numbers) and whether inputs
may share a padded pass (`pads`).

Adding an engine is one class here with `run`, `tag`, `pads` and `dtype`,
one branch in `open_engine`, and one test in tests/test_engine.py.
"""

import hashlib
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

ENGINES = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
# What "auto" opens on the CPU: the fastest engine measured with keep
# decisions within 1% of float32 torch's (docs/speed.md). Torch on another
# device, or where it cannot be built for the checkpoint (logged).
AUTO_CPU = "openvino-int8"
log = logging.getLogger(__name__)


class Engine(Protocol):
    name: str    # one of ENGINES
    dtype: str   # the precision it computes in: float32, bfloat16 or int8
    tag: str     # what cache identities add for it, e.g. "float32", "onnx-int8"
    pads: bool   # False: inputs run one at a time, unpadded (see OnnxEngine)

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The model's output (`logits` or `last_hidden_state`) for int64
        [batch, width] inputs: float32 [batch, width, ...]."""
        ...


class TorchEngine:
    """A transformers model in PyTorch, on any device, in float32 or bfloat16."""

    name = "torch"
    pads = True

    def __init__(self, model_dir: Path, task: str, device: str, dtype: str):
        import torch
        import transformers

        from .export import ONNX_TASKS

        auto, self.output = ONNX_TASKS[task]
        self.dtype = self.tag = resolve_dtype(dtype, device)
        self.device = device
        self.model = getattr(transformers, auto).from_pretrained(
            model_dir, trust_remote_code=False, dtype=getattr(torch, self.dtype)).to(device).eval()

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        import torch

        from .export import model_output

        with torch.inference_mode():
            out = model_output(self.model, self.output, torch.from_numpy(input_ids).to(self.device),
                               torch.from_numpy(attention_mask).to(self.device))
            return out.float().cpu().numpy()


class OnnxEngine:
    """The ONNX export in ONNX Runtime on the CPU: float32, or dynamic int8.

    onnx-int8 quantises a MatMul's input with one scale for the whole tensor,
    so every input of a batch, padding included, would move the others'
    numbers: it runs one input at a time, unpadded (pads = False)."""

    def __init__(self, model_dir: Path, task: str, name: str, fingerprint: str,
                 into: Path | None = None):
        import onnxruntime as ort
        import torch

        from .export import ONNX_TASKS, ensure_onnx

        self.name = self.tag = name
        self.dtype = "int8" if name == "onnx-int8" else "float32"
        self.pads = name != "onnx-int8"
        self.output = ONNX_TASKS[task][1]
        graph = ensure_onnx(model_dir, self.dtype, fingerprint, task=task, into=into) / "model.onnx"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # what --torch-threads sets
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {"input_ids": input_ids,
                                                "attention_mask": attention_mask})[0]


class OpenVINOEngine:
    """A graph compiled by OpenVINO for the CPU: the float32 ONNX export
    (openvino), or its static int8 quantisation (openvino-int8, export.py).
    Floating-point parts run in `dtype` (bfloat16 where the CPU has bf16
    instructions), on as many threads as torch uses."""

    name = "openvino"
    pads = True

    def __init__(self, graph: Path, dtype: str, tag: str):
        import openvino
        import torch

        self.dtype, self.tag = dtype, tag
        core = openvino.Core()
        self.compiled = core.compile_model(core.read_model(str(graph)), "CPU", {
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "INFERENCE_PRECISION_HINT": {"float32": "f32", "bfloat16": "bf16"}[dtype],
            "PERFORMANCE_HINT": "LATENCY"})

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        request = self.compiled.create_infer_request()  # one per call: callers may share the engine
        return request.infer({"input_ids": input_ids, "attention_mask": attention_mask})[0].copy()


def open_engine(name: str, model_dir: Path, fingerprint: str, *, task: str, who: str,
                device: str = "cpu", dtype: str = "auto", into: Path | None = None,
                calibration=None) -> Engine:
    """The engine `name` (one of ENGINES, or "auto": AUTO_CPU on the CPU,
    else torch) for the checkpoint `model_dir`.

    task: "token-classification" (output logits), "token-classification-
    hidden" (logits and last hidden states, export.ONNX_TASKS) or
    "feature-extraction" (last_hidden_state). who: the model's name in
    error messages. into:
    where exports go (default the model's directory). calibration: a
    function returning model inputs (openvino-int8 fixes its activation
    scales from them). Raises ValueError for a combination that cannot run
    (an engine that runs on the CPU only, a precision it does not have)."""
    if name == "auto":
        if device != "cpu":
            return TorchEngine(model_dir, task, device, dtype)
        try:
            return open_engine(AUTO_CPU, model_dir, fingerprint, task=task, who=who, device=device,
                               dtype=dtype, into=into, calibration=calibration)
        except Exception as e:  # noqa: BLE001 - any export or quantisation failure: fall back
            log.warning("%s --engine auto: %s cannot be built for %s (%s: %s); using torch",
                        who, AUTO_CPU, model_dir, type(e).__name__, e)
            return TorchEngine(model_dir, task, device, dtype)
    if name not in ENGINES:
        raise ValueError(f"{who} engine must be one of {', '.join(ENGINES)}, got {name!r}")
    if name == "torch":
        return TorchEngine(model_dir, task, device, dtype)
    if name.startswith("openvino"):
        from .artifacts import built_file_sha256
        from .export import ensure_onnx, ensure_openvino_int8

        if device != "cpu":
            raise ValueError(f"{who} engine {name} runs on the CPU; --device {device} "
                             "needs --engine torch")
        precision = resolve_dtype(dtype, device)
        if name == "openvino":
            graph = ensure_onnx(model_dir, "float32", fingerprint, task=task, into=into) / "model.onnx"
            return OpenVINOEngine(graph, precision, f"openvino:{precision}")
        built = ensure_openvino_int8(model_dir, fingerprint, calibration, task)
        # The tag names the quantised graph, its weights and scales (another
        # NNCF, or another float graph, could make others: the graph with
        # hidden states kept model.bin's bytes and moved logits by up to 0.18),
        # and the precision of the float parts.
        scales = hashlib.sha256("".join(built_file_sha256(built, f) for f in ("model.xml", "model.bin"))
                                .encode()).hexdigest()[:16]
        engine = OpenVINOEngine(built / "model.xml", precision, f"openvino-int8-{scales}:{precision}")
        engine.name = name
        return engine
    precision = "int8" if name == "onnx-int8" else "float32"
    if dtype not in ("auto", "float32") or device != "cpu":
        raise ValueError(f"{who} engine {name} runs on the CPU in {precision}; --model-dtype "
                         f"{dtype} --device {device} need --engine torch")
    return OnnxEngine(model_dir, task, name, fingerprint, into)


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

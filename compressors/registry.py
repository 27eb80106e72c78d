"""Compressors by name: how each is built from the configuration, and what the
service needs to know of it before one is built.

Adding a compressor: a module implementing compressors.base.Compressor, an
entry here (how to build it, what it returns, its shipped weights and its
trainer), a oneof case in CompressRequest.params named like the entry (its
parameters), and its tests. Nothing in service/ or the clients changes:
--weights, `segpress train` and `segpress eval` read the entries.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .base import Compressor
from .artifacts import ModelError
from .models import WEIGHTS_DIR, ensure_default_llmlingua2


@dataclass(frozen=True)
class Entry:
    """What the service and the CLI know of a compressor before it is built."""

    build: Callable[[object], Compressor]  # config (service.config.Config) -> compressor
    output: str  # "text" or "tensor": what the compressor returns (Info reports it)
    weights: str = ""  # the shipped trained weights under compressors/weights/ ("": none to choose)
    training: str = ""  # its trainer, a module of compressors.training ("": none)


def weights_path(name: str, config) -> Path:
    """The weights file compressor `name` loads: the one --weights names for
    it, else its shipped file; it must exist."""
    chosen = dict(pair.split("=", 1) for pair in config.weights.split(",") if pair)
    weights = Path(chosen.get(name) or WEIGHTS_DIR / REGISTRY[name].weights)
    if not weights.is_file():
        raise ModelError(f"{name} weights {weights} are missing; train them with "
                         f"`segpress train {name}` or pass --weights {name}=PATH")
    return weights


def _llmlingua2(config) -> Compressor:
    from .llmlingua2 import LLMLingua2

    path = config.llmlingua2_model or str(ensure_default_llmlingua2(config.models_dir))
    return LLMLingua2(path, device=config.device, batch_size=config.batch_size,
                      dtype=config.model_dtype, engine=config.engine)


def _complm(config) -> Compressor:
    from .complm import CompLLM
    from .models import ensure_smollm2

    return CompLLM(ensure_smollm2(config.models_dir), weights_path("complm", config),
                   device=config.device, batch_size=config.batch_size * 4, dtype=config.model_dtype,
                   max_refine_steps=config.max_refine_steps)


def _arc(config) -> Compressor:
    from .arc import Arc
    from .models import ensure_smollm2

    return Arc(ensure_smollm2(config.models_dir), weights_path("arc", config),
               device=config.device, batch_size=config.batch_size * 2, dtype=config.model_dtype)


REGISTRY: dict[str, Entry] = {
    "llmlingua2": Entry(_llmlingua2, "text", training="train_llmlingua2"),
    "complm": Entry(_complm, "tensor", "complm-smollm2-135m.safetensors", "train_complm"),
    "arc": Entry(_arc, "tensor", "arc-smollm2-135m.safetensors", "train_arc"),
}
# The compressor a request without `compressor` gets, when it is enabled;
# otherwise the first enabled one.
DEFAULT = "llmlingua2"


def default_of(names) -> str:
    """The default compressor among the enabled `names`."""
    names = list(names)
    return DEFAULT if DEFAULT in names else names[0]


def enabled(config) -> list[str]:
    """The compressors --compressors names (comma list)."""
    names = [n.strip() for n in config.compressors.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown or not names:
        raise ValueError(f"--compressors {config.compressors!r}: name one or more of {', '.join(REGISTRY)}")
    return names


def build_all(config) -> dict[str, Compressor]:
    """Loads every compressor this configuration enables."""
    built = {name: REGISTRY[name].build(config) for name in enabled(config)}
    for name, c in built.items():
        if c.output != REGISTRY[name].output:  # what Info says must be what the entry says
            raise ValueError(f"compressor {name} returns {c.output}, its registry entry says "
                             f"{REGISTRY[name].output}")
    return built

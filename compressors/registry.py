"""Compressors by name: how each is built from the configuration, and what the
service needs to know of it before one is built.

Adding a compressor: a module implementing compressors.base.Compressor, an
entry here, a oneof case in CompressRequest.params named like the entry (its
parameters), and its tests. Nothing in service/ changes.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .base import Compressor
from .artifacts import ModelError
from .models import ensure_default_llmlingua2


@dataclass(frozen=True)
class Entry:
    build: Callable[[object], Compressor]  # config (service.config.Config) -> compressor
    about: str  # one line for docs and errors


def _llmlingua2(config) -> Compressor:
    from .llmlingua2 import LLMLingua2

    path = config.llmlingua2_model or str(ensure_default_llmlingua2(config.models_dir))
    return LLMLingua2(path, device=config.device, batch_size=config.batch_size,
                      dtype=config.model_dtype, engine=config.engine)


def _trained_weights(name: str, configured, default: Path) -> Path:
    """The weights file soft compressor `name` loads: `configured` (its
    --<name>-weights flag) or the shipped `default`; it must exist."""
    weights = Path(configured or default)
    if not weights.is_file():
        raise ModelError(f"{name} weights {weights} are missing; train them with "
                         f"`segpress train {name}` or pass --{name}-weights")
    return weights


def _complm(config) -> Compressor:
    from .complm import DEFAULT_WEIGHTS, CompLLM
    from .models import ensure_smollm2

    return CompLLM(ensure_smollm2(config.models_dir),
                   _trained_weights("complm", config.complm_weights, DEFAULT_WEIGHTS),
                   device=config.device, batch_size=config.batch_size * 4, dtype=config.model_dtype)


def _arc(config) -> Compressor:
    from .arc import Arc
    from .arc_model import DEFAULT_WEIGHTS
    from .models import ensure_smollm2

    return Arc(ensure_smollm2(config.models_dir), _trained_weights("arc", config.arc_weights, DEFAULT_WEIGHTS),
               device=config.device, batch_size=config.batch_size * 2, dtype=config.model_dtype)


REGISTRY: dict[str, Entry] = {
    "llmlingua2": Entry(_llmlingua2, "LLMLingua-2 token classification: returns text"),
    "complm": Entry(_complm, "CompLLM concept embeddings: returns soft tokens for SmolLM2"),
    "arc": Entry(_arc, "ARC-Encoder pooled embeddings: returns soft tokens for SmolLM2"),
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
    return {name: REGISTRY[name].build(config) for name in enabled(config)}

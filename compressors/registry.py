"""Compressors by name, and how each is built from the configuration."""

from pathlib import Path

from .models import ModelError, ensure_default_llmlingua2


def _llmlingua2(config):
    from .llmlingua2 import LLMLingua2

    path = config.llmlingua2_model or str(ensure_default_llmlingua2(config.models_dir))
    return LLMLingua2(path, device=config.device, batch_size=config.batch_size,
                      dtype=config.model_dtype)


def _complm(config):
    from .complm import DEFAULT_WEIGHTS, CompLLM
    from .models import ensure_smollm2

    weights = config.complm_weights or DEFAULT_WEIGHTS
    if not Path(weights).is_file():
        raise ModelError(f"complm weights {weights} are missing; train them with "
                         "`segpress train complm` or pass --complm-weights")
    return CompLLM(ensure_smollm2(config.models_dir), weights, device=config.device,
                   batch_size=config.batch_size * 4, dtype=config.model_dtype)


BUILDERS = {"llmlingua2": _llmlingua2, "complm": _complm}
DEFAULT = "llmlingua2"


def enabled(config) -> list[str]:
    """The compressors --compressors names (comma list)."""
    names = [n.strip() for n in config.compressors.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown or not names:
        raise SystemExit(f"--compressors {config.compressors!r}: name one or more of {', '.join(BUILDERS)}")
    return names


def build_all(config) -> dict:
    """Loads every compressor this configuration enables."""
    return {name: BUILDERS[name](config) for name in enabled(config)}

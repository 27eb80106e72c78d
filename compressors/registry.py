"""Compressors by name, and how each is built from the configuration."""

from .models import ensure_default_llmlingua2


def _llmlingua2(config):
    from .llmlingua2 import LLMLingua2

    path = config.llmlingua2_model or str(ensure_default_llmlingua2(config.models_dir))
    return LLMLingua2(path, device=config.device, batch_size=config.batch_size,
                      dtype=config.model_dtype)


BUILDERS = {"llmlingua2": _llmlingua2}
DEFAULT = "llmlingua2"


def build_all(config) -> dict:
    """Loads every compressor this configuration enables."""
    return {name: build(config) for name, build in BUILDERS.items()}

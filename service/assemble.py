"""The pipeline as `segpress serve` builds it from the configuration: the
enabled compressors, query-aware selection's sentence embedder, and the
segment store on Redis (the configured URL, or an embedded Redis)."""

import logging

from cache.embedded import start_embedded
from cache.signing import Signer
from cache.store import SegmentStore, connect
from compressors.registry import build_all

from .config import Config, cache_secret
from .pipeline import Pipeline

log = logging.getLogger("segpress.server")


async def make_store(config: Config):
    """The segment store, and the embedded Redis handle when one was started."""
    embedded = None
    url = config.redis_url
    if not url:
        embedded, url = start_embedded(config.cache_dir)
        log.info("started embedded Redis at %s", url)
    client = connect(url, config.cache_timeout_s)
    secret = cache_secret(config)
    signer = Signer(secret) if secret is not None else None
    return SegmentStore(client, config.cache_ttl_s, config.cache_timeout_s, config.cache_retry_s,
                        signer=signer, lease_s=config.cache_lease_s), embedded


def sentence_vectors(config: Config, compressors: dict | None = None):
    """Query-aware selection's sentence vectors as configured
    (--sentence-vectors): pooled from the llmlingua2 classifier's pass
    (`compressors["llmlingua2"]`, the instance that serves, so one pass gives
    both) with the query embedded by the sentence model; or the sentence
    model over each sentence (also when llmlingua2 is not loaded). The
    sentence model: --sentence-model (default all-MiniLM-L6-v2) on
    --sentence-engine (ONNX Runtime and OpenVINO run on the CPU only, so
    torch on an accelerator), its ONNX export beside the built models for
    the default model (it lives in an installed package), else in its own
    directory."""
    from compressors.models import sentence_onnx_dir
    from compressors.sentence_vectors import ClassifierSentences, SentenceVectors

    engine = config.sentence_engine if config.device == "cpu" else "torch"
    export_dir = None if config.sentence_model else sentence_onnx_dir(config.models_dir)
    model = SentenceVectors(config.sentence_model or None, device=config.device, engine=engine,
                            export_dir=export_dir)
    classifier = (compressors or {}).get("llmlingua2")
    if config.sentence_vectors == "classifier" and classifier is not None:
        return ClassifierSentences(classifier, model)
    return model


async def open_pipeline(config: Config, embedded: bool = True):
    """The request pipeline as `serve` runs it: the configured compressors
    (torch threads per --torch-threads) and the segment store (--redis-url;
    without one, an embedded Redis, or no cache when `embedded` is False).
    Returns the pipeline and an async function that closes all of it."""
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    compressors = build_all(config)
    selector = sentence_vectors(config, compressors) if config.selection else None
    store = started = None
    if config.redis_url or embedded:
        store, started = await make_store(config)
    pipeline = Pipeline(config, compressors, store, selector)

    async def close() -> None:
        await pipeline.close()
        if store is not None:
            await store.close()
        if started is not None:
            started.shutdown()

    return pipeline, close

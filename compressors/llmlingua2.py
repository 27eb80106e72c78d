"""LLMLingua-2: keep the words a token classifier scores as important.

The model is any LLMLingua-2 checkpoint: a token classifier with two labels
(label 1 = keep), BERT WordPiece or XLM-R SentencePiece. For each segment we
run the classifier once and cache, per word, its character span, its keep
score (the mean keep probability of its tokens) and its token count. Those do
not depend on the rate or the query, so the same text at any rate is a cache
hit. `render` then picks the words to keep for the request's budget and
rebuilds the text from exact substrings of the input.

Where this differs from the reference `llmlingua` package, and why:
- Selection: the reference keeps, per 512-token chunk, words whose score is
  above a percentile of the chunk's token-weighted scores. We rank all words
  of a context by score and keep the best ones while their tokens fit in
  round(rate * context tokens). This meets the budget exactly (the reference
  percentile keeps somewhat fewer), spends it where the scores are highest
  across the whole context instead of equally per chunk, and makes
  target_tokens exact.
- Token counts use the classifier's own tokenizer; the reference counts with
  tiktoken's cl100k (a GPT tokenizer). This avoids a second tokenizer and its
  download, and is the unit every other number in the response uses.
- Output: kept words are cut from the input by tokenizer offsets, so case,
  accents, punctuation and spacing are preserved (the reference decodes
  tokens, which lowercases with uncased tokenizers and respaces punctuation).
  Tokens that share a character (the jamo of a Hangul syllable, the bytes
  of an emoji) are kept or dropped together: no character is output twice.
- force_tokens match the text (any occurrence, also inside or across words,
  and whitespace such as "\n") instead of being swapped for added tokens
  before the model runs; the model input, and so the cache, stays the same
  whatever a request forces. Occurrences that overlap ("\n" and "\n\n")
  are kept once: the output never repeats a character of the input.
- Text without spaces: the reference keeps or drops a WordPiece [UNK] (Thai,
  any run of more than 100 characters without spaces) and a many-token word
  whole. Here a long [UNK] counts, and is kept, in pieces of 8 characters
  and a word of more than MAX_WORD_TOKENS tokens in pieces of
  WORD_PIECE_TOKENS, and a context with tokens keeps at least one piece at
  any rate (round(0.5 x 1) = 0 would return it empty).
- granularity="sentence" is an addition (the reference's LLMLingua-2 path
  filters words, and optionally whole contexts): the same word scores,
  averaged per sentence, choose whole sentences. A small reader answers far
  better from whole sentences at low rates (README, Quality).
"""

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

from segpress.v1 import segpress_pb2 as pb

from .base import (ContextParts, Encoded, InvalidParams, Kind, Rendered, Segment,
                   check_word_scores, length_sorted_batches, pad_right)
from .models import (OpenVINOSession, built_file_sha256, calibration_passages, ensure_onnx,
                     ensure_openvino_int8, fingerprint, resolve_dtype)
from .segmenter import (SENTENCE_END, count_tokens, segment_text, split_gap, trim_spaces,
                        unknown_word_pieces)

NAME = "llmlingua2"
log = logging.getLogger(__name__)
# What runs the classifier: torch (float32 or bfloat16, --model-dtype), ONNX
# Runtime on the CPU in float32 or with dynamic int8 quantisation, or
# OpenVINO on the CPU reading the same float32 ONNX graph (float32 or
# bfloat16, --model-dtype) or its static int8 quantisation (what stays in
# floating point runs in --model-dtype). The graphs are made from the
# checkpoint on first use (models.ensure_onnx, models.ensure_openvino_int8).
ENGINES = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
DEFAULT_RATE = 0.5
MAX_FORCE_TOKENS = 100
MAX_FORCE_TOKEN_BYTES = 256  # UTF-8 bytes of one force token
# A word of more than MAX_WORD_TOKENS tokens (ordinary words have far fewer)
# is kept or dropped in pieces of WORD_PIECE_TOKENS tokens.
# Model inputs are padded to a multiple of this many tokens, and only inputs
# of one padded width share a forward pass, so a segment's scores never depend
# on its batch (see base.length_sorted_batches). A full window (510 tokens and
# 2 special ones) is 512: no padding.
PAD_MULTIPLE = 32
MAX_WORD_TOKENS = 8
WORD_PIECE_TOKENS = 4
_DIGIT = re.compile(r"[0-9]")
_SPACE_RUN = re.compile(r"\s+")
GRANULARITIES = {pb.GRANULARITY_UNSPECIFIED: "word", pb.GRANULARITY_WORD: "word",
                 pb.GRANULARITY_SENTENCE: "sentence",
                 pb.GRANULARITY_SENTENCE_THEN_WORD: "sentence_then_word"}
# sentence_then_word: whole sentences up to budget / FINE_RATE tokens, then
# the best words inside them down to the budget (chosen on the dev split).
FINE_RATE = 0.8


@dataclass
class Params:
    rate: float | None = None
    target_tokens: int | None = None
    force_tokens: list[str] = field(default_factory=list)
    force_reserve_digit: bool = False
    drop_consecutive: bool = False
    granularity: str = "word"  # "sentence": whole sentences; "sentence_then_word": both

    @classmethod
    def from_proto(cls, req: pb.CompressRequest) -> "Params":
        p = req.llmlingua2
        return cls(
            rate=p.rate if p.HasField("rate") else None,
            target_tokens=p.target_tokens if p.HasField("target_tokens") else None,
            force_tokens=list(p.force_tokens),
            force_reserve_digit=p.force_reserve_digit,
            drop_consecutive=p.drop_consecutive,
            granularity=GRANULARITIES.get(p.granularity, f"Granularity value {p.granularity}"),
        )

    def check(self) -> None:
        if self.granularity not in GRANULARITIES.values():
            raise InvalidParams(
                f"llmlingua2.granularity must be GRANULARITY_WORD, GRANULARITY_SENTENCE or "
                f"GRANULARITY_SENTENCE_THEN_WORD, got {self.granularity}"
            )
        if self.rate is not None and self.target_tokens is not None:
            raise InvalidParams(
                "llmlingua2.rate and llmlingua2.target_tokens are mutually exclusive; set one"
            )
        if self.rate is not None and not 0.0 < self.rate <= 1.0:  # NaN fails too
            raise InvalidParams(f"llmlingua2.rate must be in (0, 1], got {self.rate}")
        if self.target_tokens is not None and self.target_tokens <= 0:
            raise InvalidParams(
                f"llmlingua2.target_tokens must be > 0, got {self.target_tokens}"
            )
        if len(self.force_tokens) > MAX_FORCE_TOKENS:
            raise InvalidParams(
                f"llmlingua2.force_tokens has {len(self.force_tokens)} entries; "
                f"the limit is {MAX_FORCE_TOKENS}"
            )
        for i, t in enumerate(self.force_tokens):
            if t == "":
                raise InvalidParams(f"llmlingua2.force_tokens[{i}] is empty")
            if len(t) > MAX_FORCE_TOKEN_BYTES or len(t.encode("utf-8")) > MAX_FORCE_TOKEN_BYTES:
                raise InvalidParams(
                    f"llmlingua2.force_tokens[{i}] is {len(t.encode('utf-8'))} bytes; the "
                    f"limit is max_force_token_bytes={MAX_FORCE_TOKEN_BYTES}"
                )


def load(model_path: str, device: str = "cpu", batch_size: int = 16, dtype: str = "auto",
         engine: str = "auto") -> "LLMLingua2":
    """LLMLingua2 on `engine`. "auto" (the default): openvino-int8 on the CPU,
    the fastest engine measured with keep decisions within 1% of float32
    torch's (docs/speed.md); torch on another device, or where that engine
    cannot be built for the checkpoint (logged)."""
    if engine != "auto":
        return LLMLingua2(model_path, device, batch_size, dtype, engine)
    if device != "cpu":
        return LLMLingua2(model_path, device, batch_size, dtype, "torch")
    try:
        return LLMLingua2(model_path, device, batch_size, dtype, "openvino-int8")
    except Exception as e:  # noqa: BLE001 - any export or quantisation failure: fall back
        log.warning("llmlingua2 --engine auto: openvino-int8 cannot be built for %s (%s: %s); "
                    "using torch", model_path, type(e).__name__, e)
        return LLMLingua2(model_path, device, batch_size, dtype, "torch")


class LLMLingua2:
    name = NAME
    kind = Kind.WORD_SCORES
    output = "text"
    Params = Params
    limits = {"max_force_tokens": MAX_FORCE_TOKENS, "max_force_token_bytes": MAX_FORCE_TOKEN_BYTES}

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 16,
                 dtype: str = "float32", engine: str = "torch"):
        if engine not in ENGINES:
            raise ValueError(f"llmlingua2 engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        path = _resolve(model_path)
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        if config.num_labels != 2:
            raise ValueError(
                f"{model_path} is not an LLMLingua-2 checkpoint: a token classifier "
                f"with 2 labels (1 = keep) is required, it has {config.num_labels}"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        if not self.tokenizer.is_fast:
            raise ValueError(f"{model_path}: a fast tokenizer (tokenizer.json) is required")
        self.engine = engine
        self.device = device
        self.batch_size = batch_size
        self.model_id = str(model_path)
        self.fingerprint = fingerprint(path)
        window = min(config.max_position_embeddings, self.tokenizer.model_max_length, 512)
        self.window = window - self.tokenizer.num_special_tokens_to_add(pair=False)
        # Segments leave a few tokens of slack: a segment re-tokenized on its
        # own can differ by a token or two at its edges.
        self.max_segment_tokens = self.window - 8
        # Special tokens around the text: [CLS] ... [SEP] or <s> ... </s>.
        self.prefix_ids, self.suffix_ids = _special_affixes(self.tokenizer)
        if engine == "torch":
            self.dtype = resolve_dtype(dtype, device)
            self.model = AutoModelForTokenClassification.from_pretrained(
                path, trust_remote_code=False, dtype=getattr(torch, self.dtype)
            ).to(device).eval()
            # What cache keys name: the weights and the precision they ran in
            # (bfloat16 scores differ from float32 ones in the third decimal).
            self.cache_id = f"{self.fingerprint}:{self.dtype}"
        elif engine.startswith("openvino"):
            if device != "cpu":
                raise ValueError(f"llmlingua2 engine {engine} runs on the CPU; --device {device} "
                                 "needs --engine torch")
            self.dtype, self.model = resolve_dtype(dtype, device), None
            if engine == "openvino":
                graph = ensure_onnx(path, "float32", self.fingerprint) / "model.onnx"
                self.cache_id = f"{self.fingerprint}:{engine}:{self.dtype}"
            else:
                built = ensure_openvino_int8(path, self.fingerprint, self._calibration_inputs)
                graph = built / "model.xml"
                # Also the quantised weights and scales (another NNCF could
                # make others), and the precision of the float parts.
                scales = built_file_sha256(built, "model.bin")[:16]
                self.cache_id = f"{self.fingerprint}:{engine}-{scales}:{self.dtype}"
            self.session = OpenVINOSession(graph, self.dtype)
        else:
            self.dtype, self.model = "float32" if engine == "onnx" else "int8", None
            if dtype not in ("auto", "float32") or device != "cpu":
                raise ValueError(f"llmlingua2 engine {engine} runs on the CPU in "
                                 f"{self.dtype}; --model-dtype {dtype} --device {device} "
                                 f"need --engine torch")
            self.session = _onnx_session(ensure_onnx(path, self.dtype, self.fingerprint) / "model.onnx")
            # The engine and its quantisation, like the precision above.
            self.cache_id = f"{self.fingerprint}:{engine}"

    def _calibration_inputs(self) -> list[dict]:
        """Model inputs of the calibration passages' segments, one per
        forward pass as served (special tokens, padded width)."""
        inputs = []
        for passage in calibration_passages():
            for seg in self.segment(passage):
                ids = self.tokenizer(seg.text, add_special_tokens=False)["input_ids"]
                input_ids, mask = self.model_inputs([ids])
                inputs.append({"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()})
        return inputs

    def check_params(self, params: Params) -> None:
        """Checks that need the model: none (Params.check covers them all)."""

    # -- segment -----------------------------------------------------------

    def segment(self, text: str) -> list[Segment]:
        return segment_text(text, self.tokenizer, self.max_segment_tokens, unknown_pieces=True)

    def count_tokens(self, text: str, stop_after: int) -> int:
        return count_tokens(text, self.tokenizer, stop_after, unknown_pieces=True)

    def check_encoded(self, encoded: Encoded, segment: Segment) -> bool:
        """Spans inside the segment, increasing; scores in [0, 1]; counts >= 1."""
        return check_word_scores(encoded, segment)

    # -- encode: the model pass, cached per segment ------------------------

    def encode(self, texts: list[str]) -> list[Encoded]:
        """Per segment: word spans [n, 2] (int32, segment-relative), keep
        scores [n] (float32) and token counts [n] (int32)."""
        words = [self._words(t) for t in texts]
        # Every model input is at most `window` tokens; a segment that is
        # longer (only when re-tokenization grew it) spans several inputs.
        inputs = []  # (segment index, token ids)
        for si, (ids, *_) in enumerate(words):
            for k in range(0, max(len(ids), 1), self.window):
                inputs.append((si, ids[k : k + self.window]))
        probs: list[list[np.ndarray]] = [[] for _ in texts]
        chunks: dict[int, np.ndarray] = {}
        special = len(self.prefix_ids) + len(self.suffix_ids)
        for batch in length_sorted_batches([len(ids) + special for _, ids in inputs],
                                           *self._batching()):
            for i, p in zip(batch, self._keep_probs([inputs[i][1] for i in batch])):
                chunks[i] = p
        for i, (si, _) in enumerate(inputs):
            probs[si].append(chunks[i])

        out = []
        for (ids, spans, word_of_unit, unit_token), p in zip(words, probs):
            unit_probs = np.concatenate(p)[: len(ids)][unit_token]
            n_words = len(spans)
            counts = np.bincount(word_of_unit, minlength=n_words).astype(np.int32)
            sums = np.bincount(word_of_unit, weights=unit_probs, minlength=n_words)
            scores = (sums / np.maximum(counts, 1)).astype(np.float32)
            out.append({
                "spans": np.asarray(spans, dtype=np.int32).reshape(n_words, 2),
                "scores": scores,
                "tokens": counts,
            })
        return out

    def _words(self, text: str):
        """Token ids, word spans, and for every counted unit its word and
        its token.

        A unit is a token, or a piece of a long unknown-word token (the
        segmenter's unknown_word_pieces; each piece is a word of its own,
        with its token's keep probability), so words count what the
        segmenter counts. A word is a run of units of one pre-tokenizer word;
        a token made only of punctuation is a word of its own (as in the
        reference package); a word of more than MAX_WORD_TOKENS units is cut
        into words of WORD_PIECE_TOKENS units (a Chinese sentence is one
        SentencePiece word, a kana or Hangul run one WordPiece word), so a
        budget can keep part of it. Tokens that share characters (the jamo
        tokens of one Hangul syllable, the byte tokens of one emoji) are one
        unit, so no two words overlap and no character is output twice. A
        word's span reaches over characters no token covers (a zero-width
        space, a control character; see segmenter.split_gap), so nothing
        between words is lost.
        """
        enc = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        ids, word_ids = enc["input_ids"], enc.word_ids()
        offsets = trim_spaces(text, enc["offset_mapping"])
        unk = self.tokenizer.unk_token_id
        unit_spans: list[tuple[int, int]] = []
        unit_tokens: list[list[int]] = []  # per unit: its token, and zero-width ones before it
        words: list[list[int]] = []        # per word: its units
        waiting = []  # zero-width tokens: they join the next unit
        prev_wid, prev_apart = None, False
        for t, ((s, e), wid) in enumerate(zip(offsets, word_ids)):
            if e <= s:
                waiting.append(t)
                continue
            if unit_spans and s < unit_spans[-1][1]:  # shares characters with the unit before
                unit_spans[-1] = (unit_spans[-1][0], max(e, unit_spans[-1][1]))
                unit_tokens[-1] += waiting + [t]
                waiting = []
                continue
            pieces = unknown_word_pieces(text, s, e) if ids[t] == unk else [(s, e)]
            apart = _is_punct(text[s:e]) or len(pieces) > 1  # a word (or words) of its own
            for k, piece in enumerate(pieces):
                if not words or wid != prev_wid or apart or prev_apart:
                    words.append([])
                words[-1].append(len(unit_spans))
                unit_spans.append(piece)
                unit_tokens.append(waiting + [t] if k == 0 else [t])
                waiting = []
            prev_wid, prev_apart = wid, apart
        if unit_tokens:
            unit_tokens[-1] += waiting
        words = [w[i : i + WORD_PIECE_TOKENS] if len(w) > MAX_WORD_TOKENS else w
                 for w in words
                 for i in range(0, len(w), WORD_PIECE_TOKENS if len(w) > MAX_WORD_TOKENS else len(w))]
        spans = [[unit_spans[w[0]][0], unit_spans[w[-1]][1]] for w in words]
        word_of_unit = [i for i, w in enumerate(words) for u in w for _ in unit_tokens[u]]
        unit_token = [t for w in words for u in w for t in unit_tokens[u]]
        for a, b in zip(spans, spans[1:]):
            if a[1] < b[0]:
                a[1], b[0] = split_gap(text, a[1], b[0])
        if spans:
            spans[0][0] = min(spans[0][0], len(text) - len(text.lstrip()))
            spans[-1][1] = max(spans[-1][1], len(text.rstrip()))
        return (ids, spans, np.asarray(word_of_unit, dtype=np.int64),
                np.asarray(unit_token, dtype=np.int64))

    def _batching(self) -> tuple[int, int]:
        """Inputs per forward pass, and the multiple widths are padded to.

        onnx-int8 quantises a MatMul's input with one scale for the whole
        tensor, so its every input, padding included, would move the scores
        of the others: it runs one input at a time, unpadded."""
        return (1, 1) if self.engine == "onnx-int8" else (self.batch_size, PAD_MULTIPLE)

    def model_inputs(self, batch: list[list[int]]):
        """input_ids and attention_mask [batch, width] for token-id lists:
        special tokens around each, right padding to a multiple of PAD_MULTIPLE
        (none for onnx-int8, which runs one input at a time)."""
        seqs = [self.prefix_ids + list(ids) + self.suffix_ids for ids in batch]
        return pad_right(seqs, self.tokenizer.pad_token_id, multiple=self._batching()[1])

    @torch.inference_mode()
    def _keep_probs(self, batch: list[list[int]]) -> list[np.ndarray]:
        """Keep probability of every token, for a batch of token-id lists."""
        input_ids, mask = self.model_inputs(batch)  # [batch, width] each
        if self.model is None:  # ONNX Runtime or OpenVINO
            logits = self.session.run(None, {"input_ids": input_ids.numpy(),
                                             "attention_mask": mask.numpy()})[0]
            logits = torch.from_numpy(logits)  # [batch, width, 2]
        else:
            logits = self.model(  # [batch, width, 2]
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
            ).logits
        keep = logits.float().softmax(-1)[..., 1].cpu().numpy()  # [batch, width]
        n = len(self.prefix_ids)
        return [keep[i, n : n + len(ids)] for i, ids in enumerate(batch)]

    # -- render: the request's budget applied to cached scores -------------

    def budget(self, params: Params, total_tokens: int) -> int:
        """Tokens the request keeps of `total_tokens`: at least one of a
        request that has any, as _budgets gives each context."""
        if params.target_tokens is not None:
            return min(params.target_tokens, total_tokens)
        rate = DEFAULT_RATE if params.rate is None else params.rate
        return max(int(round(rate * total_tokens)), 1) if total_tokens else 0

    def render(self, contexts: list[ContextParts], params: Params, query: str | None = None) -> list[Rendered]:
        """With a selection (ContextParts.allowed, .budget), only words inside
        the allowed ranges are candidates, and the context's budget is the
        one selection gave it."""
        words = [context_words(c) for c in contexts]
        totals = [int(w["tokens"].sum()) for w in words]
        budgets = [b if c.budget is None else c.budget
                   for c, b in zip(contexts, _budgets(totals, params))]
        return [
            self._render_one(c.text, w, total, budget, params, c.allowed)
            for c, w, total, budget in zip(contexts, words, totals, budgets)
        ]

    def _render_one(self, text, w, total, budget, params: Params, allowed=None) -> Rendered:
        items = select(text, w, budget, params, allowed)
        return Rendered(
            original_tokens=total,
            compressed_tokens=sum(t for _, _, _, t in items),
            text=_join(text, [(s, e) for s, e, _, _ in items]),
        )


def select(text: str, w: dict[str, np.ndarray], budget: int, params: Params,
           allowed: list[tuple[int, int]] | None = None):
    """The items to keep, in text order: (start, end, forced, tokens).

    Items are the context's words plus forced strings that touch no word
    (whitespace such as "\n", 0 tokens). With `allowed` (character ranges
    chosen by query-aware selection), nothing outside them is kept, forced
    or not."""
    spans, scores, tokens = w["spans"], w["scores"].astype(np.float64), w["tokens"]
    inside = np.ones(len(spans), dtype=bool) if allowed is None else within(spans, allowed)
    forced = np.zeros(len(spans), dtype=bool)
    if params.force_reserve_digit:
        forced |= np.array([bool(_DIGIT.search(text[s:e])) for s, e in spans], dtype=bool)
    # Occurrences of force tokens: words they touch are kept; those that
    # touch no word become items of their own.
    force_hits = np.zeros(len(spans), dtype=bool)
    extra = set()
    for ft in dict.fromkeys(params.force_tokens):
        for start, end in _occurrences(text, ft):
            lo = np.searchsorted(spans[:, 1], start, side="right")
            hi = np.searchsorted(spans[:, 0], end, side="left")
            if lo < hi:
                force_hits[lo:hi] = True
            else:
                extra.add((start, end))
    forced |= force_hits
    if allowed is not None:
        forced &= inside
        force_hits &= inside
        extra = {x for x in extra if within(np.array([x]), allowed)[0]}

    keep = None
    if params.granularity == "sentence":
        keep = _best_sentences(text, spans, scores, tokens, forced, budget, inside)
    elif params.granularity == "sentence_then_word":
        sentences = _best_sentences(text, spans, scores, tokens, forced,
                                    int(budget / FINE_RATE), inside)
        if sentences.any():
            keep = _best_words(scores, tokens, forced, budget, sentences & inside)
    if keep is None or not keep.any():  # word granularity, or no whole sentence fits
        keep = _best_words(scores, tokens, forced, budget, inside)
    if budget > 0 and not keep.any():
        keep = _one_word(scores, tokens, budget, inside)

    kept = np.flatnonzero(keep)  # one pass in numpy, then plain Python values
    items = list(zip(*spans[kept].T.tolist(), force_hits[kept].tolist(), tokens[kept].tolist()))
    items += [(s, e, True, 0) for s, e in _merge_overlapping(extra)]
    items.sort()
    if params.drop_consecutive:
        items = _drop_consecutive(text, items, set(params.force_tokens))
    return items


def within(spans: np.ndarray, allowed: list[tuple[int, int]]) -> np.ndarray:
    """[n] bool: which spans ([n, 2]) lie inside one of the sorted, disjoint
    `allowed` ranges."""
    if not allowed or len(spans) == 0:
        return np.zeros(len(spans), dtype=bool)
    ranges = np.asarray(allowed, dtype=np.int64)
    i = np.searchsorted(ranges[:, 0], spans[:, 0], side="right") - 1  # last range starting at or before
    ok = i >= 0
    ok[ok] = spans[ok, 1] <= ranges[i[ok], 1]
    return ok


def _occurrences(text: str, sub: str):
    """(start, end) of the non-overlapping occurrences of `sub`, left to
    right (as re.finditer would find them, without compiling and caching a
    pattern per force token)."""
    i = text.find(sub)
    while i >= 0:
        yield i, i + len(sub)
        i = text.find(sub, i + len(sub))


def _merge_overlapping(spans) -> list[tuple[int, int]]:
    """Spans with the overlapping ones merged (force tokens such as "\\n" and
    "\\n\\n" match the same characters), so no character is output twice.
    Spans that only touch stay apart."""
    out: list[list[int]] = []
    for s, e in sorted(spans):
        if out and s < out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def _one_word(scores, tokens, budget: int, candidates=None) -> np.ndarray:
    """Words to keep [n] (bool) when the budget kept none (a context of a
    few words, or of words longer than its budget): the best-scoring word
    that fits the budget, else the best of the shortest ones. A context
    never comes back empty while its budget is above zero."""
    keep = np.zeros(len(scores), dtype=bool)
    idx = np.flatnonzero(np.ones(len(scores), dtype=bool) if candidates is None else candidates)
    if len(idx) == 0:
        return keep
    fits = idx[tokens[idx] <= budget]
    pool = fits if len(fits) else idx[tokens[idx] == tokens[idx].min()]
    keep[pool[np.argmax(scores[pool])]] = True  # the first among equals
    return keep


def _best_words(scores, tokens, forced, budget: int, candidates) -> np.ndarray:
    """Words to keep [n] (bool): forced words, then the highest-scoring
    candidates (earlier first among equals) while their tokens fit the budget."""
    idx = np.flatnonzero(candidates | forced)
    rank = idx[np.lexsort((idx, -scores[idx], ~forced[idx]))]
    within = np.cumsum(tokens[rank]) <= budget
    keep = np.zeros(len(scores), dtype=bool)
    keep[rank[within]] = True
    return keep | forced


def _best_sentences(text: str, spans, scores, tokens, forced, budget: int, candidates) -> np.ndarray:
    """Words to keep [n] (bool), whole sentences at a time.

    A sentence's score is the mean score of its words. Sentences with a forced
    word are kept; the others whose words are all candidates from the highest
    score down (earlier first among
    equals), each while it fits what is left of the budget, so a long
    sentence that does not fit is passed over for shorter ones below it.
    Empty when not one sentence fits."""
    if len(spans) == 0:
        return np.zeros(0, dtype=bool)
    ends = np.array([m.end() for m in SENTENCE_END.finditer(text)], dtype=np.int64)
    sentence = np.searchsorted(ends, spans[:, 0], side="right")  # [n] sentence of each word
    _, sentence = np.unique(sentence, return_inverse=True)       # numbered 0..m-1, no gaps
    words = np.bincount(sentence)                                 # [m]
    mean = np.bincount(sentence, weights=scores) / words          # [m]
    cost = np.bincount(sentence, weights=tokens).astype(np.int64)  # [m]
    must = np.bincount(sentence, weights=forced) > 0              # [m]
    whole = np.bincount(sentence, weights=~candidates) == 0       # [m] every word a candidate
    chosen = must.copy()
    left = budget - int(cost[must].sum())
    for k in np.lexsort((np.arange(len(mean)), -mean)):
        if whole[k] and not chosen[k] and cost[k] <= left:
            chosen[k] = True
            left -= int(cost[k])
    return chosen[sentence]


# -- helpers ----------------------------------------------------------------


def _resolve(model_path: str) -> Path:
    """A local directory for a directory path or a hub id."""
    p = Path(model_path).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_path))
    except Exception as e:  # noqa: BLE001 - offline, unknown id, auth
        raise FileNotFoundError(
            f"llmlingua2 model {model_path!r} is neither a directory nor a reachable "
            f"hub id ({type(e).__name__}). Pass a checkpoint directory with "
            f"--llmlingua2-model or SEGPRESS_LLMLINGUA2_MODEL."
        ) from e


def _onnx_session(path: Path):
    """An ONNX Runtime CPU session on as many threads as torch uses (which
    --torch-threads sets), all graph optimisations on."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _special_affixes(tok) -> tuple[list[int], list[int]]:
    """Ids of the special tokens the tokenizer puts before and after a text."""
    bare = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise ValueError("cannot locate the text between the tokenizer's special tokens")


def _is_punct(s: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in s)


def context_words(c: ContextParts) -> dict[str, np.ndarray]:
    """All words of a context, with spans relative to the context."""
    spans = [e["spans"] + seg.start for seg, e in zip(c.segments, c.encoded)]
    return {
        "spans": np.concatenate(spans) if spans else np.zeros((0, 2), np.int32),
        "scores": np.concatenate([e["scores"] for e in c.encoded]) if c.encoded else np.zeros(0, np.float32),
        "tokens": np.concatenate([e["tokens"] for e in c.encoded]) if c.encoded else np.zeros(0, np.int32),
    }


def _budgets(totals: list[int], params: Params) -> list[int]:
    """Tokens each context may keep."""
    if params.target_tokens is None:
        # At least one token of a context that has any: round(0.5 x 1) = 0
        # would return a one-word context empty.
        rate = DEFAULT_RATE if params.rate is None else params.rate
        return [max(int(round(rate * t)), 1) if t else 0 for t in totals]
    grand = sum(totals)
    if params.target_tokens >= grand:
        return list(totals)
    # Share the target in proportion to length (largest remainder), so the
    # budgets add up to exactly target_tokens.
    exact = [params.target_tokens * t / grand for t in totals]
    budgets = [int(x) for x in exact]
    short = params.target_tokens - sum(budgets)
    for i in sorted(range(len(totals)), key=lambda i: budgets[i] - exact[i])[:short]:
        budgets[i] += 1
    # A context with tokens gets at least one while the target allows: one
    # taken from the largest budget (the target is still met exactly).
    for i in [i for i, t in enumerate(totals) if t and not budgets[i]]:
        largest = max(range(len(budgets)), key=lambda k: budgets[k])
        if budgets[largest] < 2:
            break
        budgets[largest] -= 1
        budgets[i] = 1
    return budgets


def _drop_consecutive(text, items, force_tokens):
    """Drops a forced item equal to the previous forced item when no other
    kept word lies between them."""
    out, last_forced, between = [], None, False
    for s, e, is_forced, t in items:
        piece = text[s:e]
        if is_forced and piece in force_tokens:
            if piece == last_forced and not between:
                continue
            last_forced, between = piece, False
        else:
            between = True
        out.append((s, e, is_forced, t))
    return out


def _join(text: str, spans: list[tuple[int, int]]) -> str:
    """Kept pieces in order, separated by whitespace cut from the input: the
    last whitespace run since the previous piece, preferring one with a line
    break, so paragraphs and lines stay apart. Pieces that were not adjacent
    and had no whitespace between them ("0;1" without ";") get one space,
    so no new word ("01") is made from two.

    The output is faithful whatever the spans: a piece that reaches back
    into the one before it is cut where that one ended, so no character of
    the input is output twice or out of order."""
    parts, prev_end = [], None
    for s, e in spans:
        if prev_end is not None:
            s = max(s, prev_end)
            if s >= e:
                continue
            gap = text[prev_end:s]
            if gap.isspace():  # the common cases first: one whitespace run, itself
                parts += (gap, text[s:e])
                prev_end = e
                continue
            if gap[-1:].isspace() and "\n" not in gap:  # no line break: the trailing run
                parts += (gap[len(gap.rstrip()):], text[s:e])
                prev_end = e
                continue
            runs = _SPACE_RUN.findall(gap)
            lines = [r for r in runs if "\n" in r]
            if lines or runs:
                parts.append((lines or runs)[-1])
            elif gap and not (text[s].isspace() or text[prev_end - 1].isspace()):
                parts.append(" ")  # (a forced space or line break needs none)
        parts.append(text[s:e])
        prev_end = e
    return "".join(parts)

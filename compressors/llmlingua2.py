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
- threshold (keep every word scoring at least a probability, however many
  tokens that is) is an addition, asked for in the reference's tracker.
- granularity="sentence" is an addition (the reference's LLMLingua-2 path
  filters words, and optionally whole contexts): the same word scores,
  averaged per sentence, choose whole sentences. A small reader answers far
  better from whole sentences at low rates (README, Quality), so it is the
  API's default without a query; "word", the reference's unit, is the
  default with one (selection has chosen the sentences) and on request.
"""

import logging
import unicodedata
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer

from .base import (ContextParts, Encoded, Kind, Rendered, Segment,
                   check_word_scores, length_sorted_batches, pad_right)
from .keep import (MAX_FORCE_TOKEN_BYTES, MAX_FORCE_TOKENS, Params, budgets, context_words,
                   join, select)
from .artifacts import fingerprint
from .engines import open_engine
from .export import calibration_passages
from .segmenter import (count_tokens, segment_text, sentence_spans, split_gap, trim_spaces,
                        unknown_word_pieces)

NAME = "llmlingua2"
log = logging.getLogger(__name__)
# Model inputs are padded to a multiple of this many tokens, and only inputs
# of one padded width share a forward pass, so a segment's scores never depend
# on its batch (see base.length_sorted_batches). A full window (510 tokens and
# 2 special ones) is 512: no padding.
PAD_MULTIPLE = 32
# A word of more than MAX_WORD_TOKENS tokens (ordinary words have far fewer)
# is kept or dropped in pieces of WORD_PIECE_TOKENS tokens.
MAX_WORD_TOKENS = 8
WORD_PIECE_TOKENS = 4
class LLMLingua2:
    name = NAME
    kind = Kind.WORD_SCORES
    output = "text"
    Params = Params
    limits = {"max_force_tokens": MAX_FORCE_TOKENS, "max_force_token_bytes": MAX_FORCE_TOKEN_BYTES}

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 16,
                 dtype: str = "float32", engine: str = "torch"):
        """engine: one of engines.ENGINES, or "auto" (what the server runs:
        engines.open_engine)."""
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
        self.device = device
        self.batch_size = batch_size
        self.model_id = str(model_path)
        self.fingerprint = fingerprint(path)
        window = min(config.max_position_embeddings, self.tokenizer.model_max_length, 512)
        self.window = window - self.tokenizer.num_special_tokens_to_add(pair=False)
        # Segments leave a few tokens of slack: a segment re-tokenized on its
        # own can differ by a token or two at its edges.
        self.max_segment_tokens = self.window - 8
        self.hidden_size = config.hidden_size  # of encode_with_sentences' vectors
        # Special tokens around the text: [CLS] ... [SEP] or <s> ... </s>.
        self.prefix_ids, self.suffix_ids = _special_affixes(self.tokenizer)
        # One pass gives keep scores and (for selection) last hidden states.
        self.engine = open_engine(engine, path, self.fingerprint, task="token-classification-hidden",
                                  who="llmlingua2", device=device, dtype=dtype,
                                  calibration=self._calibration_inputs)
        self.dtype = self.engine.dtype
        # What cache keys name: the weights and what ran them (bfloat16 scores
        # differ from float32 ones in the third decimal; int8 more).
        self.cache_id = f"{self.fingerprint}:{self.engine.tag}"

    def _calibration_inputs(self) -> list[dict]:
        """Model inputs of the calibration passages' segments, one per
        forward pass as openvino-int8 serves them (special tokens, padded
        width)."""
        inputs = []
        for passage in calibration_passages():
            for seg in self.segment(passage):
                ids = self.tokenizer(seg.text, add_special_tokens=False)["input_ids"]
                input_ids, mask = self.model_inputs([ids], PAD_MULTIPLE)
                inputs.append({"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()})
        return inputs

    def check_params(self, params: Params) -> None:
        """Checks that need the model: none (Params.check covers them all)."""

    def variant(self, params: Params) -> "LLMLingua2":
        return self  # no parameter changes what is cached

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
        return self.encode_with_sentences(texts, sentences=False)[0]

    def encode_with_sentences(self, texts: list[str], sentences: bool = True
                              ) -> tuple[list[Encoded], list[Encoded]]:
        """encode's values, and from the same pass each segment's sentences:
        {"spans": int32 [m, 2] (segment-relative, segmenter.sentence_spans),
        "vectors": float16 [m, hidden]}, the mean of the classifier's last
        hidden states over each sentence's tokens, unit length (selection's
        sentence vectors, compressors/sentence_vectors.ClassifierSentences).
        sentences=False: the second list is empty."""
        words = [self._words(t) for t in texts]
        # Every model input is at most `window` tokens; a segment that is
        # longer (only when re-tokenization grew it) spans several inputs.
        inputs = []  # (segment index, token ids)
        for si, (ids, *_) in enumerate(words):
            for k in range(0, max(len(ids), 1), self.window):
                inputs.append((si, ids[k : k + self.window]))
        chunks: dict[int, tuple] = {}  # input index -> (keep [tokens], hidden [tokens, dim])
        special = len(self.prefix_ids) + len(self.suffix_ids)
        for batch in length_sorted_batches([len(ids) + special for _, ids in inputs],
                                           *self._batching()):
            for i, out in zip(batch, self._token_outputs([inputs[i][1] for i in batch])):
                chunks[i] = out
        per_segment: list[list[tuple]] = [[] for _ in texts]
        for i, (si, _) in enumerate(inputs):
            per_segment[si].append(chunks[i])

        values, vectors = [], []
        for text, (ids, spans, word_of_unit, unit_token, offsets), parts in zip(texts, words, per_segment):
            keep = np.concatenate([k for k, _ in parts])[: len(ids)]  # [tokens]
            unit_probs = keep[unit_token]
            n_words = len(spans)
            counts = np.bincount(word_of_unit, minlength=n_words).astype(np.int32)
            sums = np.bincount(word_of_unit, weights=unit_probs, minlength=n_words)
            scores = (sums / np.maximum(counts, 1)).astype(np.float32)
            values.append({
                "spans": np.asarray(spans, dtype=np.int32).reshape(n_words, 2),
                "scores": scores,
                "tokens": counts,
            })
            if sentences:
                hidden = np.concatenate([h for _, h in parts])[: len(ids)]  # [tokens, dim]
                vectors.append(_sentence_vectors(text, offsets, hidden))
        return values, vectors

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
                np.asarray(unit_token, dtype=np.int64), offsets)

    def _batching(self) -> tuple[int, int]:
        """Inputs per forward pass, and the multiple widths are padded to
        (one at a time, unpadded, for an engine that does not pad)."""
        return (self.batch_size, PAD_MULTIPLE) if self.engine.pads else (1, 1)

    def model_inputs(self, batch: list[list[int]], multiple: int | None = None):
        """input_ids and attention_mask [batch, width] for token-id lists:
        special tokens around each, right padding to a multiple of PAD_MULTIPLE
        (none for an engine that runs one input at a time)."""
        seqs = [self.prefix_ids + list(ids) + self.suffix_ids for ids in batch]
        multiple = self._batching()[1] if multiple is None else multiple
        return pad_right(seqs, self.tokenizer.pad_token_id, multiple=multiple)

    def _token_outputs(self, batch: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """For a batch of token-id lists, every token's keep probability
        [tokens] and last hidden state [tokens, dim]."""
        input_ids, mask = self.model_inputs(batch)  # [batch, width] each
        out = self.engine.run(input_ids.numpy(), mask.numpy())  # [batch, width, 2 + dim]
        keep = torch.from_numpy(out[..., :2]).softmax(-1)[..., 1].numpy()  # [batch, width]
        n = len(self.prefix_ids)
        return [(keep[i, n : n + len(ids)], out[i, n : n + len(ids), 2:]) for i, ids in enumerate(batch)]

    # -- render: the request's budget applied to cached scores -------------

    def budget(self, params: Params, total_tokens: int) -> int | None:
        """Tokens the request keeps of `total_tokens`: the rule every context's
        budget follows (keep.budgets); None in threshold mode (no budget)."""
        return None if params.threshold is not None else budgets([total_tokens], params)[0]

    def render(self, contexts: list[ContextParts], params: Params, query: str | None = None) -> list[Rendered]:
        """With a selection (ContextParts.allowed, .budget), only words inside
        the allowed ranges are candidates, and the context's budget is the
        one selection gave it."""
        words = [context_words(c) for c in contexts]
        totals = [int(w["tokens"].sum()) for w in words]
        shares = [b if c.budget is None else c.budget
                  for c, b in zip(contexts, budgets(totals, params))]
        out, unused = [], 0
        for c, w, total, budget in zip(contexts, words, totals, shares):
            # What a context could not use (its words or sentences did not
            # fit the rest) goes to the next one: the request keeps what it
            # asked for, not each context's shortfall added up.
            budget += unused
            out.append(self._render_one(c.text, w, total, budget, params, c.allowed))
            unused = max(budget - out[-1].compressed_tokens, 0) if params.threshold is None else 0
        return out

    def _render_one(self, text, w, total, budget, params: Params, allowed=None) -> Rendered:
        items = select(text, w, budget, params, allowed)
        return Rendered(
            original_tokens=total,
            compressed_tokens=sum(t for _, _, _, t in items),
            text=join(text, [(s, e) for s, e, _, _ in items]),
        )


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


def _special_affixes(tok) -> tuple[list[int], list[int]]:
    """Ids of the special tokens the tokenizer puts before and after a text."""
    bare = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise ValueError("cannot locate the text between the tokenizer's special tokens")


def _sentence_vectors(text: str, offsets, hidden: np.ndarray) -> Encoded:
    """Each sentence of `text` (segmenter.sentence_spans): the mean of
    `hidden` [tokens, dim] over the tokens inside it (`offsets`: the tokens'
    character spans), unit length, float16; a sentence without a token of
    its own (none seen so far) gets the tokens that overlap it."""
    spans = sentence_spans(text)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)  # [tokens, 2]
    vectors = np.zeros((len(spans), hidden.shape[1]), np.float32)
    for i, (s, e) in enumerate(spans):
        inside = (offsets[:, 0] >= s) & (offsets[:, 1] <= e) & (offsets[:, 1] > offsets[:, 0])
        if not inside.any():
            inside = (offsets[:, 0] < e) & (offsets[:, 1] > s)
        if inside.any():
            v = hidden[inside].mean(0)
            vectors[i] = v / max(float(np.linalg.norm(v)), 1e-12)
    return {"spans": np.asarray(spans, np.int32).reshape(len(spans), 2),
            "vectors": vectors.astype(np.float16)}


def _is_punct(s: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in s)


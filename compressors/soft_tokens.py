"""What the soft-token compressors (complm, arc) share, written once.

Both turn each segment into rows in SmolLM2's input-embedding space with a
model built on the decoder itself (complm_model.py, arc_model.py), cache the
rows per segment, and answer with a context's rows followed by a learned
<Cont> row. A subclass says only what differs: its name and Params, how its
model is loaded, which rows a segment's cached value holds (`value_rows`,
`encode_batch`) and which of them a request reads (`rows_name`).

Digits pass verbatim. A segment's tokens are cut into runs of digit tokens
(SmolLM2 writes a number one digit per token) and runs of the rest; each run
of the rest is encoded as a segment of its own, and each digit becomes a row
that is the decoder's own input embedding of it, where the digit stood:

    "The code is 9224."  ->  rows("The code is ") E(9) E(2) E(2) E(4) rows(".")

The decoder reads such a row as the digit itself. Numbers are what the
encoders' rows lose most (dev needle codes: 0 of 8 answered from complm's
CEs, 8 of 8 with the digits verbatim), for a few more rows (dev needle
contexts: complm 2.4%, arc x4 7%). docs/soft-tokens.md has the measurements.

Names may pass verbatim too, when a request asks (`verbatim_names`): the
tokens of each word that starts with a capital and a small letter and does
not start a sentence ("Lisbon", "Biscuit", not "The" or "IPO"), found by
`name_mask`. Names are the other thing the rows lose (people, places,
pets); they cost more rows than digits, so they are opt-in, and the rows
with them are cached apart (a variant, below).

A request with `verbatim_names` or `refine_steps` > 0 is served by
`variant(params)`: the same compressor with names verbatim, or with those
rows refined at compress time (compressors/refine.py), or both, under a
cache identity of its own; a refined variant's value holds only the array
the request reads. Refinement leaves the verbatim rows as they are.
"""

import copy
import hashlib
import re
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from segpress.v1 import segpress_pb2 as pb

from .artifacts import fingerprint
from .base import (ContextParts, Encoded, InvalidParams, Kind, Rendered, Segment,
                   length_sorted_batches, overlaps)
from .engines import resolve_dtype
from .models import SMOLLM2
from .refine import LR, PULL, refine_rows
from .segmenter import count_tokens, segment_text

# Element types the response tensor can have (proto DType -> name).
OUTPUT_DTYPES = {pb.DTYPE_UNSPECIFIED: "float32", pb.DTYPE_FLOAT32: "float32",
                 pb.DTYPE_FLOAT16: "float16", pb.DTYPE_BFLOAT16: "bfloat16"}


def digit_ids(tokenizer) -> frozenset[int]:
    """Token ids that are digits only (SmolLM2's ten, one digit each)."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return frozenset(i for i, t in enumerate(vocab) if t and t.isascii() and t.isdigit())


def cut_runs(ids: list[int], verbatim: list[bool]) -> list[tuple[bool, list[int]]]:
    """Token `ids` as (verbatim, ids) runs, in order: runs of tokens whose
    `verbatim` flag is set and runs of the rest."""
    out: list[tuple[bool, list[int]]] = []
    for i, v in zip(ids, verbatim, strict=True):
        if out and out[-1][0] == v:
            out[-1][1].append(i)
        else:
            out.append((v, [i]))
    return out


def digit_runs(ids: list[int], digits: frozenset[int]) -> list[tuple[bool, list[int]]]:
    """Token `ids` as (verbatim, ids) runs, in order: runs of `digits`
    (verbatim) and runs of the rest."""
    return cut_runs(ids, [i in digits for i in ids])


# A word: letters only (digits and punctuation end it).
_WORD = re.compile(r"[^\W\d_]+")
# What may stand between a sentence's end and its first word: spaces, opening quotes, brackets.
_OPENING = " \t\n\"'\u201c\u2018(["


def name_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each name in `text`: a word whose first letter is a
    capital and second a small letter, unless it starts a sentence (nothing
    but spaces, quotes or brackets before it, since the text's start, a
    line break or one of . ! ? :). "Lars moved to Oslo." -> Oslo only."""
    out = []
    for m in _WORD.finditer(text):
        w = m.group()
        if len(w) < 2 or not (w[0].isupper() and w[1].islower()):
            continue
        j = m.start()
        while j and text[j - 1] in _OPENING:  # back over the spaces, quotes, brackets before it
            j -= 1
        if j and text[j - 1] not in ".!?:" and "\n" not in text[j:m.start()]:
            out.append((m.start(), m.end()))
    return out


def name_mask(pieces: list[str]) -> list[bool]:
    """Whether each token, given as its decoded text (`pieces`, in order),
    holds a letter of a name (name_spans of the pieces joined)."""
    spans, out, at = iter(name_spans("".join(pieces))), [], 0
    span = next(spans, None)
    for p in pieces:
        end = at + len(p)
        while span and span[1] <= at:  # names that end before this token
            span = next(spans, None)
        out.append(bool(span) and span[0] < end)
        at = end
    return out


def output_dtype(value: int) -> str:
    """The proto DType `value` by name (an unknown value named so that
    check_output_dtype refuses it)."""
    return OUTPUT_DTYPES.get(value, f"DType value {value}")


def check_output_dtype(name: str, output_dtype: str) -> None:
    """A soft compressor's `output_dtype` parameter is one it can return."""
    names = sorted(set(OUTPUT_DTYPES.values()))
    if output_dtype not in names:
        raise InvalidParams(f"{name}.output_dtype must be one of {', '.join(names)}, "
                            f"got {output_dtype!r}")


def check_refine_steps(name: str, steps: int) -> None:
    """A soft compressor's `refine_steps` is not negative (the most a server
    allows is checked with the model: SoftTokens.check_params)."""
    if steps < 0:
        raise InvalidParams(f"{name}.refine_steps must be 0 (no refinement) or more, got {steps}")


class SoftTokens:
    """Base of complm and arc (see base.SoftCompressor for the contract)."""

    kind = Kind.SOFT_TOKENS
    output = "tensor"
    limits: dict[str, int] = {}
    pooling_factors: tuple[int, ...] = ()  # request-selectable factors (arc)
    what = "rows"  # what the rows are called in messages
    # (decoder_dir, weights, dtype, device, fold) -> (model, tokenizer)
    load_model: Callable

    refine_steps = 0  # > 0 in a variant: its rows are refined this many steps
    refined_rows = ""  # the array a variant's value holds (its rows_name)
    refine_pull = PULL  # weight of refinement's pull toward the encoder's rows (refine.py)
    verbatim_digits = True  # digits pass as the decoder's own embeddings (module doc)
    verbatim_names = False  # True in a variant: names pass so too (module doc)

    def __init__(self, decoder_dir: str | Path, weights: str | Path, device: str = "cpu",
                 batch_size: int = 32, dtype: str = "float32", max_refine_steps: int = 0):
        self.dtype = resolve_dtype(dtype, device)
        self.decoder_dir, self.device = decoder_dir, device
        # Most refine_steps a request may ask for (Info: limits.max_refine_steps).
        self.max_refine_steps = max_refine_steps
        self.limits = {"max_refine_steps": max_refine_steps} if max_refine_steps else {}
        self._variants: dict[tuple[bool, int, str], SoftTokens] = {}
        self._plain: list = []  # the unchanged decoder refinement reads, loaded on first use
        self._lock = threading.Lock()
        # The server only compresses (the caller's decoder reads the rows),
        # so the LoRA is folded into the layers it adapts: one matmul each.
        self.model, self.tokenizer = type(self).load_model(decoder_dir, weights, self.dtype, device,
                                                           fold=True)
        self.config = self.model.config
        self.batch_size = batch_size
        self.max_segment_tokens = self.config.segment_tokens
        self.hidden_size = self.model.decoder.config.hidden_size
        self.decoder_id = SMOLLM2
        self.decoder_fingerprint = fingerprint(decoder_dir)
        self.model_id, self.fingerprint = self._identity(decoder_dir, weights)
        # The rows depend on the decoder, the trained weights, the precision
        # and whether digits pass verbatim.
        self.cache_id = f"{self.fingerprint}{':digits' if self.verbatim_digits else ''}:{self.dtype}"
        self.digit_ids = digit_ids(self.tokenizer)
        # The learned <Cont> row every context ends with, float32 [1, hidden].
        self.cont_row = self.model.task("cont").detach().float().cpu().numpy()[None]

    # -- what a subclass says --------------------------------------------------

    def value_rows(self, n_tokens: int) -> dict[str, int]:
        """The rows of each array the encoder makes of `n_tokens` tokens
        (one run of a segment), by name."""
        raise NotImplementedError

    def encode_batch(self, ids: list[list[int]]) -> dict[str, list[torch.Tensor]]:
        """The encoder's arrays of each run of tokens, by name: [rows, hidden] each."""
        raise NotImplementedError

    def rows_name(self, params) -> str:
        """Which array of a segment's value the request reads."""
        raise NotImplementedError

    # -- the contract ------------------------------------------------------------

    def check_params(self, params) -> None:
        """The request's decoder, if named, must be the one the rows are made
        for, and refine_steps within this server's limit."""
        most = self.max_refine_steps
        if params.refine_steps and params.refine_steps > most:
            raise InvalidParams(
                f"{self.name}.refine_steps is {params.refine_steps}; this server refines at most "
                f"{most} steps (Info: limits.max_refine_steps; the server's --max-refine-steps)")
        if params.decoder and params.decoder not in (self.decoder_id, self.decoder_fingerprint):
            raise InvalidParams(
                f"{self.name}.decoder is {params.decoder!r}, but this server's {self.name} makes "
                f"{self.what} only for decoder {self.decoder_id!r} (fingerprint "
                f"{self.decoder_fingerprint}); leave {self.name}.decoder empty or name that decoder")

    def variant(self, params) -> "SoftTokens":
        """The compressor that serves `params`: this one, or, with
        verbatim_names and/or refine_steps, a copy with names verbatim and/or
        whose value is the request's rows refined that many steps, cached
        under its own identity (one copy per (names, steps, rows), shared by
        every request that asks for them)."""
        names, steps = bool(params.verbatim_names), params.refine_steps
        if not names and not steps:
            return self
        key = (names, steps, self.rows_name(params) if steps else "")
        with self._lock:
            if key not in self._variants:
                v = copy.copy(self)
                v.verbatim_names, v.refine_steps, v.refined_rows = key
                if names:
                    v.cache_id += ":names"
                if steps:
                    pull = f":pull{self.refine_pull}" if self.refine_pull else ""
                    v.cache_id += f":refine{steps}:lr{LR}{pull}:{key[2]}"
                self._variants[key] = v
            return self._variants[key]

    def runs(self, ids: list[int]) -> list[tuple[bool, list[int]]]:
        """A segment's tokens as (verbatim, ids) runs: digits (and, in a
        names variant, names) verbatim, the rest for the encoder (one run,
        all of them, with neither)."""
        verbatim = [self.verbatim_digits and i in self.digit_ids for i in ids]
        if self.verbatim_names:
            named = name_mask([self.tokenizer.decode([i]) for i in ids])
            verbatim = [v or n for v, n in zip(verbatim, named)]
        return cut_runs(ids, verbatim)

    def cached_rows(self, ids: list[int]) -> dict[str, int]:
        """The rows of each array in the cached value of the segment of
        token `ids`, by name: its runs' value_rows and one row per verbatim
        token; a variant's one refined array of them."""
        names = self.value_rows(1) if not self.refine_steps else {self.refined_rows: 0}
        rows = dict.fromkeys(names, 0)
        for verbatim, run in self.runs(ids):
            encoded = self.value_rows(len(run))
            for name in rows:
                rows[name] += len(run) if verbatim else encoded[name]
        return rows

    def budget(self, params, total_tokens: int) -> None:
        """No token budget: a segment's rows are fixed by its tokens."""
        return None

    def segment(self, text: str) -> list[Segment]:
        return segment_text(text, self.tokenizer, self.max_segment_tokens)

    def count_tokens(self, text: str, stop_after: int) -> int:
        return count_tokens(text, self.tokenizer, stop_after)

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def rows(self, segment: Segment, params) -> int:
        """Rows render gives `segment` with `params`, from its tokens alone."""
        return self.cached_rows(self.ids(segment.text))[self.rows_name(params)]

    def end_rows(self) -> int:
        return 1  # the <Cont> row

    def check_encoded(self, encoded: Encoded, segment: Segment) -> bool:
        """Exactly the arrays encode makes of this segment's text: float32
        [rows, hidden] each, finite."""
        want = self.cached_rows(self.ids(segment.text))
        try:
            return set(encoded) == set(want) and all(
                encoded[k].dtype == np.float32 and encoded[k].shape == (rows, self.hidden_size)
                and bool(np.isfinite(encoded[k]).all()) for k, rows in want.items())
        except (AttributeError, TypeError):
            return False

    def encode(self, texts: list[str]) -> list[Encoded]:
        """Per segment: its value, float32 arrays by name (cached_rows)."""
        ids = [self.ids(t) for t in texts]
        with torch.inference_mode():
            values, fixed = self._encode_runs([self.runs(i) for i in ids])
        if self.refine_steps:
            for batch in length_sorted_batches([len(i) for i in ids], self.batch_size):
                refined = self._refine([values[i][self.refined_rows] for i in batch], [ids[i] for i in batch],
                                       [fixed[i] for i in batch])
                for i, r in zip(batch, refined):
                    values[i] = {self.refined_rows: r}
        return [{name: r.float().cpu().numpy() for name, r in v.items()} for v in values]

    def _encode_runs(self, segments: list[list[tuple[bool, list[int]]]]):
        """Each segment's arrays from its runs (SoftTokens.runs), in order: the
        encoder's arrays of a run that is not verbatim (all such runs in
        length-sorted batches), the decoder's input embeddings of a verbatim
        run's tokens. Also, per segment, bool [rows]: which rows of the array
        refinement moves are verbatim."""
        todo = [run for segment in segments for verbatim, run in segment if not verbatim]
        made: list[dict[str, torch.Tensor]] = [{} for _ in todo]
        for batch in length_sorted_batches([len(r) for r in todo], self.batch_size):
            for name, per_run in self.encode_batch([todo[i] for i in batch]).items():
                for i, r in zip(batch, per_run):
                    made[i][name] = r.float()
        names = list(self.value_rows(1))
        moved = self.refined_rows or names[0]
        E = self.model.embed
        values, fixed, encoded = [], [], iter(made)
        for segment in segments:
            parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
            keep: list[bool] = []
            for verbatim, run in segment:
                if verbatim:
                    rows = E(torch.tensor(run, device=E.weight.device)).float()  # [len(run), hidden]
                    got = dict.fromkeys(names, rows)
                else:
                    got = next(encoded)
                for name in names:
                    parts[name].append(got[name])
                keep += [verbatim] * len(got[moved])
            values.append({name: torch.cat(p) for name, p in parts.items()})
            fixed.append(torch.tensor(keep, dtype=torch.bool))
        return values, fixed

    def _refine(self, rows: list[torch.Tensor], ids: list[list[int]],
                fixed: list[torch.Tensor]) -> list[torch.Tensor]:
        """The variant's rows of a batch, refined (compressors/refine.py) on
        the unchanged decoder, the verbatim rows (`fixed`) kept, padded to one
        width for segments of up to max_segment_tokens tokens (wider for one
        with more rows than the encoder's, where digits pass verbatim)."""
        most = self.value_rows(self.max_segment_tokens)[self.refined_rows]
        width = max([1 + most + self.max_segment_tokens] + [1 + len(r) + len(t) for r, t in zip(rows, ids)])
        rec = self.model.task("rec").detach()
        bos_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        return refine_rows(self._plain_decoder(), bos_id, rec, rows, ids,
                           self.refine_steps, width, self.refine_pull, fixed)

    def _plain_decoder(self):
        """The decoder without the encoder's LoRA, frozen: what reads the rows."""
        with self._lock:
            if not self._plain:
                from transformers import AutoModelForCausalLM

                decoder = AutoModelForCausalLM.from_pretrained(self.decoder_dir, dtype=getattr(torch, self.dtype))
                self._plain.append(decoder.to(self.device).eval().requires_grad_(False))
            return self._plain[0]

    def render(self, contexts: list[ContextParts], params, query: str | None = None) -> list[Rendered]:
        """Each context's rows (the request's array of each segment that
        selection left, in order), then the <Cont> row, counted with the last segment: float32 [rows, hidden]. The
        pipeline converts them to params.output_dtype for the wire."""
        name, out = self.rows_name(params), []
        for c in contexts:
            rows = [e[name] for seg, e in zip(c.segments, c.encoded) if overlaps(seg, c.allowed)]
            if rows:
                rows[-1] = np.concatenate([rows[-1], self.cont_row])
            tensor = np.concatenate(rows) if rows else np.zeros((0, self.hidden_size), np.float32)
            out.append(Rendered(original_tokens=sum(s.n_tokens for s in c.segments),
                                compressed_tokens=len(tensor), tensor=tensor,
                                segment_rows=[len(r) for r in rows]))
        return out

    # -- helpers ---------------------------------------------------------------

    def _identity(self, decoder_dir, weights) -> tuple[str, str]:
        """(model id, fingerprint). Weights trained for another decoder are
        refused. The fingerprint covers the decoder and the weights: the
        rows depend on both."""
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            trained_for = f.metadata().get("decoder_fingerprint")
        if trained_for not in (None, self.decoder_fingerprint):
            raise ValueError(f"{self.name} weights {weights} were trained for decoder "
                             f"{trained_for[:16]}..., not for {decoder_dir} "
                             f"({self.decoder_fingerprint[:16]}...)")
        h = hashlib.sha256(self.decoder_fingerprint.encode())
        h.update(Path(weights).read_bytes())
        return f"{self.name}:{Path(weights).name}", h.hexdigest()

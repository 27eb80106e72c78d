"""Which words to keep: the request's budget applied to cached word scores.

Torch-free and model-free: everything here works on a context's words (their
character spans, keep scores and token counts, as LLMLingua2.encode caches
them) and the request's parameters (`Params`, from the request's
llmlingua2 message, checked). `budgets` gives each context its tokens,
`select` picks the words (or whole sentences) to keep within them (or, in
threshold mode, those that score at least the threshold), and
`join` rebuilds the text from exact substrings of the input.
"""

import re
from dataclasses import dataclass, field

import numpy as np

from segpress.v1 import segpress_pb2 as pb

from .base import ContextParts, InvalidParams
from .segmenter import SENTENCE_END

DEFAULT_RATE = 0.5
# sentence_then_word: whole sentences up to budget / FINE_RATE tokens, then
# the best words inside them down to the budget (chosen on the dev split).
FINE_RATE = 0.8
_DIGIT = re.compile(r"[0-9]")
_SPACE_RUN = re.compile(r"\s+")

MAX_FORCE_TOKENS = 100
MAX_FORCE_TOKEN_BYTES = 256  # UTF-8 bytes of one force token
GRANULARITIES = {pb.GRANULARITY_WORD: "word", pb.GRANULARITY_SENTENCE: "sentence",
                 pb.GRANULARITY_SENTENCE_THEN_WORD: "sentence_then_word"}


def default_granularity(req: pb.CompressRequest) -> str:
    """GRANULARITY_UNSPECIFIED: whole sentences unless query-aware selection
    runs (a query, selection not disabled), where selection has already cut
    to the relevant sentences and words fill the budget inside them. Without
    a question, word-level output at rate 0.33 is telegraphic and a reader
    answers far less from it than from whole sentences (docs/quality.md)."""
    selecting = req.HasField("query") and not req.selection.disabled
    return "word" if selecting else "sentence"


@dataclass
class Params:
    rate: float | None = None
    target_tokens: int | None = None
    force_tokens: list[str] = field(default_factory=list)
    force_reserve_digit: bool = False
    drop_consecutive: bool = False
    granularity: str = "word"  # "sentence": whole sentences; "sentence_then_word": both
    threshold: float | None = None  # keep what scores at least this, instead of a budget

    @classmethod
    def from_proto(cls, req: pb.CompressRequest) -> "Params":
        p = req.llmlingua2
        return cls(
            rate=p.rate if p.HasField("rate") else None,
            target_tokens=p.target_tokens if p.HasField("target_tokens") else None,
            force_tokens=list(p.force_tokens),
            force_reserve_digit=p.force_reserve_digit,
            drop_consecutive=p.drop_consecutive,
            granularity=(default_granularity(req) if p.granularity == pb.GRANULARITY_UNSPECIFIED
                         else GRANULARITIES.get(p.granularity, f"Granularity value {p.granularity}")),
            threshold=p.threshold if p.HasField("threshold") else None,
        )

    def check(self) -> None:
        if self.granularity not in GRANULARITIES.values():
            raise InvalidParams(
                f"llmlingua2.granularity must be GRANULARITY_WORD, GRANULARITY_SENTENCE or "
                f"GRANULARITY_SENTENCE_THEN_WORD, got {self.granularity}"
            )
        given = [name for name in ("rate", "target_tokens", "threshold")
                 if getattr(self, name) is not None]
        if len(given) > 1:
            raise InvalidParams(
                f"llmlingua2.{' and llmlingua2.'.join(given)} are mutually exclusive; set one"
            )
        if self.rate is not None and not 0.0 < self.rate <= 1.0:  # NaN fails too
            raise InvalidParams(f"llmlingua2.rate must be in (0, 1], got {self.rate}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:  # NaN fails too
            raise InvalidParams(f"llmlingua2.threshold must be in [0, 1], got {self.threshold}")
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


def select(text: str, w: dict[str, np.ndarray], budget: int, params,
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

    if params.threshold is not None:
        keep = _above(text, spans, scores, tokens, forced, params.threshold, params.granularity, inside)
    else:
        keep = _within_budget(text, spans, scores, tokens, forced, budget, params.granularity, inside)
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


def _within_budget(text, spans, scores, tokens, forced, budget: int, granularity: str,
                   candidates) -> np.ndarray:
    """Words to keep [n] (bool) within `budget` tokens, by `granularity`;
    whole sentences fall back to words when not one of them fits."""
    if granularity == "sentence":
        keep = _best_sentences(text, spans, scores, tokens, forced, budget, candidates)
        if keep.any():
            return keep
    elif granularity == "sentence_then_word":
        sentences = _best_sentences(text, spans, scores, tokens, forced,
                                    int(budget / FINE_RATE), candidates)
        if sentences.any():
            keep = _best_words(scores, tokens, forced, budget, sentences & candidates)
            if keep.any():
                return keep
    return _best_words(scores, tokens, forced, budget, candidates)


def _above(text, spans, scores, tokens, forced, threshold: float, granularity: str,
           candidates) -> np.ndarray:
    """Words to keep [n] (bool) in threshold mode, however many tokens: the
    candidates scoring at least `threshold` (word), the sentences whose mean
    score does (sentence), the words that do inside those sentences
    (sentence_then_word); forced words, and sentences with one, always.
    Sentences fall back to words when not one of them reaches it."""
    words = candidates & (scores >= threshold)
    if granularity != "word" and len(spans):
        sentence, mean, _, must, whole = _sentences(text, spans, scores, tokens, forced, candidates)
        chosen = (must | (whole & (mean >= threshold)))[sentence]  # [n]
        if chosen.any():
            return chosen if granularity == "sentence" else (chosen & words) | forced
    return words | forced


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
    sentence, mean, cost, must, whole = _sentences(text, spans, scores, tokens, forced, candidates)
    chosen = must.copy()
    left = budget - int(cost[must].sum())
    for k in np.lexsort((np.arange(len(mean)), -mean)):
        if whole[k] and not chosen[k] and cost[k] <= left:
            chosen[k] = True
            left -= int(cost[k])
    return chosen[sentence]


def _sentences(text, spans, scores, tokens, forced, candidates):
    """The sentence of each word [n] (numbered 0..m-1) and, per sentence [m]:
    its mean word score, its tokens, whether it has a forced word, and
    whether every word of it is a candidate."""
    ends = np.array([m.end() for m in SENTENCE_END.finditer(text)], dtype=np.int64)
    sentence = np.searchsorted(ends, spans[:, 0], side="right")  # [n] sentence of each word
    _, sentence = np.unique(sentence, return_inverse=True)       # numbered 0..m-1, no gaps
    words = np.bincount(sentence)                                 # [m]
    mean = np.bincount(sentence, weights=scores) / words          # [m]
    cost = np.bincount(sentence, weights=tokens).astype(np.int64)  # [m]
    must = np.bincount(sentence, weights=forced) > 0              # [m]
    whole = np.bincount(sentence, weights=~candidates) == 0       # [m] every word a candidate
    return sentence, mean, cost, must, whole


def context_words(c: ContextParts) -> dict[str, np.ndarray]:
    """All words of a context, with spans relative to the context."""
    spans = [e["spans"] + seg.start for seg, e in zip(c.segments, c.encoded)]
    return {
        "spans": np.concatenate(spans) if spans else np.zeros((0, 2), np.int32),
        "scores": np.concatenate([e["scores"] for e in c.encoded]) if c.encoded else np.zeros(0, np.float32),
        "tokens": np.concatenate([e["tokens"] for e in c.encoded]) if c.encoded else np.zeros(0, np.int32),
    }


def budgets(totals: list[int], params) -> list[int]:
    """Tokens each context of `totals` tokens may keep: the request's
    round(rate x all tokens), or params.target_tokens, shared in proportion
    to length (largest remainder), so that the budgets add up to it exactly
    and a request of many short contexts keeps what it asked for, not each
    context's rounding. With a rate, a context that has tokens keeps at least
    one (round(0.5 x 1) = 0 would return a one-word context empty); with a
    target, at least one while the target allows. In threshold mode every
    token (the threshold, not a budget, decides)."""
    if params.threshold is not None:  # threshold mode: no budget
        return list(totals)
    if params.target_tokens is None:
        rate = DEFAULT_RATE if params.rate is None else params.rate
        shared = _shared(totals, int(round(rate * sum(totals))))
        return [max(b, 1) if t else 0 for b, t in zip(shared, totals)]
    if params.target_tokens >= sum(totals):
        return list(totals)
    budgets = _shared(totals, params.target_tokens)
    # A context with tokens gets at least one while the target allows: one
    # taken from the largest budget (the target is still met exactly).
    for i in [i for i, t in enumerate(totals) if t and not budgets[i]]:
        largest = max(range(len(budgets)), key=lambda k: budgets[k])
        if budgets[largest] < 2:
            break
        budgets[largest] -= 1
        budgets[i] = 1
    return budgets


def _shared(totals: list[int], target: int) -> list[int]:
    """`target` shared over `totals` in proportion, largest remainder first
    (ties to the earlier context): ints that add up to `target`."""
    grand = sum(totals)
    if not grand:
        return [0] * len(totals)
    exact = [target * t / grand for t in totals]
    out = [int(x) for x in exact]
    short = target - sum(out)
    for i in sorted(range(len(totals)), key=lambda i: out[i] - exact[i])[:short]:
        out[i] += 1
    return out


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


def join(text: str, spans: list[tuple[int, int]]) -> str:
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

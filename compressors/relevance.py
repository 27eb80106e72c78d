"""Query-aware selection: which sentences of which contexts a question needs.

It runs in front of any compressor (LongLLMLingua's coarse stage; PAR's
relevance and redundancy): the contexts' sentences are ranked against the
query, the most relevant are kept up to `keep_rate` of the request's tokens,
repeated sentences are kept once, and each kept context gets a share of the
compressor's budget that grows with its relevance. The compressor's own
render (the fine stage) then meets the exact budget inside what was kept.

What is cached is query-independent, per segment, like the compressor's own
values: each sentence's span and its embedding (compressors/sentence_vectors.py:
all-MiniLM-L6-v2, unit length, float16). Per request there is
one embedding (the query), dot products, BM25 over the request's sentences
(compressors/lexicon.py: each segment's words are tokenized once and kept in
process), and a fusion of the two rankings:

    dense_i = <e(query), e(sentence_i)>           cosine (unit vectors)
    bm25_i  = BM25(query, sentence_i)              statistics of this request's sentences
    fused_i = 1 / (60 + rank_dense_i) + 1 / (60 + rank_bm25_i)   reciprocal rank fusion

Lexical matching matters here: retrieved passages often share their shape
and differ only in the name or number the question asks about, which a
sentence embedding barely sees; the embedding finds paraphrases BM25 misses.
A context's relevance, in [0, 1], is its best sentence's mean of the two
scores scaled within the request (see `fuse`); 1 is the best on both.
"""

from dataclasses import dataclass

import numpy as np

from segpress.v1 import segpress_pb2 as pb

from . import hop
from .base import ContextParts, Encoded, InvalidParams
from .lexicon import Lexicon, SentenceWords

RRF_K = 60
# The coarse stage keeps this many times the compressor's budget (the fine
# stage then cuts it to the budget), or, for a compressor without a budget
# (soft tokens at a fixed rate, llmlingua2 in threshold mode), this share of
# the request's tokens. Chosen on the dev split (docs/quality.md): a small
# reader answers best from a few whole, relevant passages; twice the budget,
# word-pruned, confuses it.
COARSE_FACTOR = 1.0
SOFT_KEEP_RATE = 0.5
# Each kept context's share of the budget is weighted from 1 + DYNAMIC (the
# most relevant) down to 1 - DYNAMIC (the least): LongLLMLingua's dynamic
# compression ratio, at its default. (The coarse stage takes the best
# contexts' sentences first; best sentences first, across contexts, measured
# worse on dev and was removed: docs/quality.md.)
DYNAMIC = 0.3
# Without a min_relevance in the request, contexts are kept in relevance
# order while the budget holds them, and dropped below a cut only where the
# relevances separate (hop.cut, hop.SEPARATION; said per context in the
# response). The fixed cut this replaced (0.75 of the best, chosen on 14 dev
# examples of multidoc) dropped what the request paid for whenever evidence
# was spread, and the second passage of every multi-hop question.
# Token costs are sums of float shares: a sum that should be a whole number
# of tokens may miss it in the last bits.
EPSILON = 1e-6


@dataclass(frozen=True)
class Options:
    """How selection runs (the request's SelectionOptions)."""

    keep_rate: float | None = None   # share of the request's tokens the coarse stage keeps
    ranker: str = "hybrid"           # hybrid (dense + BM25), dense, bm25
    order: str = "original"          # order of the contexts in the joined text
    keep_duplicates: bool = False    # keep near-identical sentences every time they occur
    min_relevance: float | None = None  # contexts below this relevance are not kept
                                        # (None: the cut where relevances separate)

    @classmethod
    def from_proto(cls, sel: pb.SelectionOptions) -> "Options":
        """The options of a request, or InvalidParams naming the field."""
        rankers = {pb.RANKER_UNSPECIFIED: "hybrid", pb.RANKER_HYBRID: "hybrid",
                   pb.RANKER_DENSE: "dense", pb.RANKER_BM25: "bm25"}
        orders = {pb.ORDER_UNSPECIFIED: "original", pb.ORDER_ORIGINAL: "original",
                  pb.ORDER_RELEVANCE: "relevance"}
        if sel.ranker not in rankers:
            raise InvalidParams(f"selection.ranker {sel.ranker} is unknown; use RANKER_HYBRID (1), "
                                "RANKER_DENSE (2) or RANKER_BM25 (3)")
        if sel.order not in orders:
            raise InvalidParams(f"selection.order {sel.order} is unknown; use ORDER_ORIGINAL (1) "
                                "or ORDER_RELEVANCE (2)")
        keep_rate = sel.keep_rate if sel.HasField("keep_rate") else None
        if keep_rate is not None and not 0.0 < keep_rate <= 1.0:  # NaN fails too
            raise InvalidParams(f"selection.keep_rate must be in (0, 1], got {keep_rate}")
        min_relevance = sel.min_relevance if sel.HasField("min_relevance") else None
        if min_relevance is not None and not 0.0 <= min_relevance <= 1.0:
            raise InvalidParams(f"selection.min_relevance must be in [0, 1], got {min_relevance}")
        return cls(keep_rate, rankers[sel.ranker], orders[sel.order], sel.keep_duplicates,
                   min_relevance=min_relevance)


@dataclass
class Choice:
    """What selection decided for one context."""

    relevance: float                 # in [0, 1]
    rank: int                        # 0 = the most relevant context
    allowed: list[tuple[int, int]]   # kept sentence spans, context-relative, sorted
    budget: int | None               # tokens the compressor may keep of it
    below_cut: bool = False          # left out by the relevance cut, not for lack of budget

    @property
    def kept(self) -> bool:
        return bool(self.allowed)


def choose(parts: list[ContextParts], vectors: list[list[Encoded]], query: str,
           query_vector: np.ndarray, budget: int | None, options: Options,
           words: list[list[SentenceWords]] | None = None) -> list[Choice]:
    """One Choice per context.

    `vectors[k][j]` is the sentence value of segment j of context k, and
    `words[k][j]` its sentences' words (made here when not given: the
    pipeline keeps them per segment); `budget` the tokens the compressor
    keeps of all contexts (None: it has no budget; the coarse stage alone
    decides what goes on)."""
    total_tokens = sum(s.n_tokens for p in parts for s in p.segments)
    # Every sentence of the request: context [n], global span [n, 2],
    # tokens [n], vector [n, dim].
    ctx, spans, cost, vecs, segment_words = [], [], [], [], []
    for k, (part, values) in enumerate(zip(parts, vectors)):
        for j, (seg, v) in enumerate(zip(part.segments, values)):
            sp = np.asarray(v["spans"], np.int64).reshape(-1, 2)  # [m, 2] segment-relative
            # The compressor's tokens of a sentence: the segment's, shared by
            # the sentences' characters, so a segment's sentences cost all of
            # its tokens (keeping every sentence leaves the whole budget).
            chars = sp[:, 1] - sp[:, 0]
            ctx.append(np.full(len(sp), k))
            spans.append(sp + seg.start)
            cost.append(seg.n_tokens * chars / max(int(chars.sum()), 1))
            vecs.append(v["vectors"])
            segment_words.append(words[k][j] if words is not None else
                                 SentenceWords.of([seg.text[s:e] for s, e in sp.tolist()]))
    n = sum(map(len, ctx))
    if n == 0:
        return [Choice(0.0, k, [], 0 if budget is not None else None) for k in range(len(parts))]
    ctx_a, cost_a, spans_a = np.concatenate(ctx), np.concatenate(cost), np.concatenate(spans)
    lexicon = Lexicon(segment_words)  # BM25 for both rounds, the hop's counts, the repeat check

    def text_of(i: int) -> str:
        return parts[ctx_a[i]].text[spans_a[i, 0]:spans_a[i, 1]]

    fused, sentence_relevance = fuse(query, query_vector, np.concatenate(vecs).astype(np.float32),
                                     options.ranker, lexicon)  # [n] each
    relevance = np.zeros(len(parts))
    np.maximum.at(relevance, ctx_a, sentence_relevance)
    first = _rank(fused, ctx_a, len(parts))  # [k] 0 = the best context of the first round
    # The cut: an absolute one when the request sets min_relevance, else
    # where the contexts' relevances separate (hop.cut; 0 when they do not).
    level = options.min_relevance if options.min_relevance is not None else hop.cut(relevance)
    # The second hop: contexts the terms of the most relevant sentence lead
    # to (their BM25 scores separate at the top), kept right after the best
    # context and that sentence's.
    chain, second, source = hop.chain(query, text_of, lexicon, sentence_relevance, ctx_a, len(parts))
    lead = (first == 0) | (np.arange(len(parts)) == source)  # the best context, the hop's source
    chain &= ~lead
    group = np.where(lead, 0, np.where(chain, 1, 2))  # [k] the lead, its chain, the rest
    below = (group == 2) & (relevance < level)               # [k] left out by the cut
    rank = np.empty(len(parts), dtype=np.int64)
    rank[np.lexsort((first, group))] = np.arange(len(parts))
    # Inside a chain context its sentences the second round found come first.
    score = np.where(np.isin(ctx_a, np.flatnonzero(chain)), second + fused.max() + 1.0, fused)
    # The best context's sentences first, then the next context's.
    order = np.lexsort((np.arange(n), -score, rank[ctx_a]))

    # Coarse: the best sentences while they fit (at least the best one); a
    # sentence that repeats one already kept is skipped.
    if options.keep_rate is not None:
        room = options.keep_rate * total_tokens
    elif budget is not None:
        room = COARSE_FACTOR * budget
    else:
        room = SOFT_KEEP_RATE * total_tokens
    if budget is not None:
        room = max(room, budget)  # the fine stage needs at least its budget to choose from
    chosen = np.zeros(n, dtype=bool)
    seen = _Seen()
    used = 0.0
    first_kept = True
    costs, left_out = cost_a.tolist(), below[ctx_a].tolist()  # Python scalars: a fast loop
    for i in order.tolist():
        if not first_kept and (used + costs[i] > room + EPSILON or left_out[i]):
            continue  # does not fit, or a context the cut leaves out
        words = lexicon.words[i]
        if not options.keep_duplicates and seen.repeats(words):
            continue
        chosen[i], first_kept = True, False
        used += costs[i]
        seen.add(words)

    kept_tokens = np.bincount(ctx_a, weights=cost_a * chosen, minlength=len(parts))
    budgets = _share(budget, kept_tokens, rank) if budget is not None else None

    if budgets is not None:  # a context the budget leaves no token is not kept
        chosen &= budgets[ctx_a] > 0

    out = []
    for k in range(len(parts)):
        allowed = sorted((int(s), int(e)) for s, e in spans_a[chosen & (ctx_a == k)])
        out.append(Choice(float(min(relevance[k], 1.0)), int(rank[k]), allowed,
                          None if budgets is None else int(budgets[k]),
                          bool(below[k] and not allowed)))
    return out


def _rank(score: np.ndarray, ctx: np.ndarray, k: int) -> np.ndarray:
    """[k] each context's rank by its best sentence's score (0 = best; ties
    in request order)."""
    best = np.full(k, -np.inf)
    np.maximum.at(best, ctx, score)
    rank = np.empty(k, dtype=np.int64)
    rank[np.lexsort((np.arange(k), -best))] = np.arange(k)
    return rank


def fuse(query: str, query_vector: np.ndarray, vectors: np.ndarray, ranker: str,
         lexicon: Lexicon) -> tuple[np.ndarray, np.ndarray]:
    """Each sentence's relevance to the query, two ways, [n] each:

    - the ranking score: reciprocal rank fusion of the dense and BM25
      rankings (or one of them, for ablations), each term 1 / (RRF_K + rank + 1);
    - the relevance: the mean over the rankers of the score scaled to [0, 1]
      within this request (dense: min to max; BM25: over its max; a ranker
      that tells nothing apart, such as BM25 with no query word anywhere, is
      left out), which keeps the gaps RRF flattens."""
    n = len(vectors)
    scores = []  # (score [n], the score that scales to 0)
    if ranker in ("hybrid", "dense"):
        dense = vectors @ query_vector.astype(np.float32)
        scores.append((dense, dense.min()))
    if ranker in ("hybrid", "bm25"):
        scores.append((lexicon.bm25(query), 0.0))
    fused, scaled = np.zeros(n), []
    for s, lo in scores:
        # Rank = how many score strictly higher: ties share a rank, so
        # sentences BM25 cannot tell apart (no query word) get no order from it.
        r = np.searchsorted(np.sort(-s), -s, side="left")
        fused += 1.0 / (RRF_K + r + 1)
        if s.max() > lo:
            scaled.append((s - lo) / (s.max() - lo))
    relevance = np.mean(scaled, axis=0) if scaled else np.ones(n)
    return fused, relevance


def bm25(query: str, texts: list[str]) -> np.ndarray:
    """BM25 scores [n] of `texts` for `query` (Lexicon.bm25)."""
    return Lexicon.of(texts).bm25(query)


class _Seen:
    """Kept sentences (as lowercased word tuples), to find repeats: the same
    words, or one of 5 words or more inside the other, as where overlapping
    chunks cut a sentence. Two facts of one template with other names or
    numbers differ in a word: both stay.

    Each check costs about the sentence's length, not the number kept:
    a kept sentence inside this one starts at one of its 5-word grams and
    has a length kept sentences starting with that gram have, so it is a
    set lookup of that slice; this one inside a kept sentence means every
    gram of it is in that sentence, so only the kept sentences that hold
    its rarest gram are compared (none, when a gram of it is new, as the
    name in a template is), and at most MAX_COMPARED of them: text built so
    that many kept sentences share every gram of one that none of them
    holds could otherwise make each check cost the number kept. Past that a
    repeat may be kept twice, which costs budget, never faithfulness."""

    N = 5
    MAX_COMPARED = 64

    def __init__(self):
        self.items: list[str] = []  # kept sentences, _joined
        self.exact: set[tuple[str, ...]] = set()
        self.containing: dict[tuple, list[int]] = {}  # gram -> kept sentences that have it
        self.lengths: dict[tuple, set[int]] = {}      # gram -> lengths of kept ones starting with it

    def repeats(self, words: tuple[str, ...]) -> bool:
        if words in self.exact:
            return bool(words)
        m = len(words)
        if m < self.N:
            return False
        grams = [words[i : i + self.N] for i in range(m - self.N + 1)]
        for i, g in enumerate(grams):  # a kept sentence inside this one
            for length in self.lengths.get(g, ()):
                if i + length <= m and words[i : i + length] in self.exact:
                    return True
        pools = [self.containing.get(g) for g in set(grams)]  # this one inside a kept one
        if any(pool is None for pool in pools):
            return False
        key = _joined(words)
        return any(key in self.items[j] for j in min(pools, key=len)[: self.MAX_COMPARED])

    def add(self, words: tuple[str, ...]) -> None:
        j = len(self.items)
        self.items.append(_joined(words))
        self.exact.add(words)
        if len(words) >= self.N:
            for g in {words[i : i + self.N] for i in range(len(words) - self.N + 1)}:
                self.containing.setdefault(g, []).append(j)
            self.lengths.setdefault(words[: self.N], set()).add(len(words))


def _joined(words: tuple[str, ...]) -> str:
    """Words as one string, each between separators that no word holds, so
    that one sentence's words are inside another's exactly when its string
    is inside the other's (a substring search in C)."""
    return "\x1f" + "\x1f".join(words) + "\x1f"


def _share(budget: int, kept: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The compressor's budget split over the contexts [k] (ints that add up
    to min(budget, kept tokens)): in proportion to what each kept, weighted
    from 1 + DYNAMIC (the most relevant) down to 1 - DYNAMIC (the least),
    LongLLMLingua's dynamic compression ratio; never more than a context kept."""
    k = len(kept)
    weight = 1 + DYNAMIC * (1 - 2 * rank / max(k - 1, 1))
    want = kept * weight
    total = min(float(budget), float(kept.sum()))
    out = np.zeros(k)
    free = kept > 0
    left = total
    while free.any() and left > 1e-9:  # water-filling: cap at what a context kept
        share = left * want / max(want[free].sum(), 1e-12) * free
        capped = free & (out + share >= kept)
        if not capped.any():
            out += share
            break
        left -= (kept[capped] - out[capped]).sum()
        out[capped] = kept[capped]
        free &= ~capped
    floor = np.floor(out + EPSILON).astype(np.int64)
    short = int(round(total)) - int(floor.sum())
    for i in np.argsort(floor - out)[: max(short, 0)]:  # largest remainders first
        floor[i] += 1
    # A context that kept something gets at least one token while the total
    # allows, taken from the largest share (the total stays the same).
    for i in np.flatnonzero((kept > 0) & (floor == 0)):
        largest = int(np.argmax(floor))
        if floor[largest] < 2:
            break
        floor[largest] -= 1
        floor[i] = 1
    return floor

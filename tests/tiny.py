"""The smallest compressor that keeps the contract (compressors/base.py), for
the fast test tier: no model, no torch, deterministic.

segment: runs of at most 8 words. encode: each word's span, a score from a
hash of the word, and a token count of 1 (the same arrays llmlingua2
caches); count_tokens and check_encoded as the contract asks. render: the words scoring at least 0.5 (at least the first word),
of those a selection allowed, cut from the context. It counts what it encodes, so tests can see cache hits
and shared work. A test double of the compressor interface only: Redis and
gRPC around it stay real.
"""

import re
import threading
import zlib
from dataclasses import dataclass

import numpy as np

from compressors.base import ContextParts, Encoded, Kind, Rendered, Segment, check_word_scores

_WORD = re.compile(r"\S+")


@dataclass
class Params:
    @classmethod
    def from_proto(cls, req) -> "Params":
        return cls()

    def check(self) -> None:
        pass


class Tiny:
    name = "tiny"
    output = "text"
    kind = Kind.WORD_SCORES
    Params = Params
    limits: dict[str, int] = {}
    model_id = "tiny"
    fingerprint = "0" * 64
    cache_id = "tiny:v1"
    dtype = "float32"
    max_segment_tokens = 8

    def __init__(self):
        self.encoded: list[str] = []  # every segment text encode saw, in order

    def check_params(self, params) -> None:
        pass

    def variant(self, params):
        return self

    def budget(self, params, total_tokens: int) -> None:
        return None  # it keeps what scores >= 0.5, whatever the size

    def segment(self, text: str) -> list[Segment]:
        words = [m.span() for m in _WORD.finditer(text)]
        out = []
        for i in range(0, len(words), self.max_segment_tokens):
            run = words[i : i + self.max_segment_tokens]
            start, end = run[0][0], run[-1][1]
            out.append(Segment(start, end, text[start:end], len(run)))
        return out

    def encode(self, texts: list[str]) -> list[Encoded]:
        self.encoded += texts
        out = []
        for t in texts:
            spans = np.array([m.span() for m in _WORD.finditer(t)], np.int32).reshape(-1, 2)
            scores = np.array([zlib.crc32(t[s:e].encode()) % 1000 / 1000 for s, e in spans],
                              np.float32)
            out.append({"spans": spans, "scores": scores, "tokens": np.ones(len(spans), np.int32)})
        return out

    def count_tokens(self, text: str, stop_after: int) -> int:
        return len(_WORD.findall(text))  # a token is a word; fine at test sizes

    def check_encoded(self, encoded: Encoded, segment: Segment) -> bool:
        return check_word_scores(encoded, segment)

    def render(self, contexts: list[ContextParts], params, query=None) -> list[Rendered]:
        out = []
        for c in contexts:
            words = [(seg.start + s, seg.start + e) for seg, v in zip(c.segments, c.encoded)
                     for s, e in v["spans"]]
            if c.allowed is not None:  # selection ran: only inside what it kept
                words = [(s, e) for s, e in words if any(a <= s and e <= b for a, b in c.allowed)]
            scores = [zlib.crc32(c.text[s:e].encode()) % 1000 / 1000 for s, e in words]
            words = [w for w, score in zip(words, scores) if score >= 0.5] or words[:1]
            out.append(Rendered(original_tokens=sum(s.n_tokens for s in c.segments),
                                compressed_tokens=len(words),
                                text=" ".join(c.text[s:e] for s, e in words)))
        return out


class Gated(Tiny):
    """Tiny with real blocking points a test opens: its model pass waits for
    `gate`, and segmenting a context that contains HOLD waits for
    `segment_gate`. Requests stay where the test holds them for as long as it
    needs, on any machine, with no sleeps."""

    name, cache_id = "gated", "gated:v1"

    def __init__(self):
        super().__init__()
        self.gate, self.entered = threading.Event(), threading.Event()
        self.segment_gate, self.segmenting = threading.Event(), threading.Semaphore(0)

    def encode(self, texts: list[str]) -> list[Encoded]:
        self.entered.set()
        if not self.gate.wait(120):
            raise RuntimeError("the test never opened the model gate")
        return super().encode(texts)

    def segment(self, text: str) -> list[Segment]:
        if "HOLD" in text:
            self.segmenting.release()
            if not self.segment_gate.wait(120):
                raise RuntimeError("the test never opened the segment gate")
        return super().segment(text)

    def open(self) -> None:
        self.gate.set()
        self.segment_gate.set()

"""Pre-tokenized training text, for training runs on a machine that has no
tokenizer work to spare and no text (compressors/training/device.py).

A shard is every document of a split cut into segments by the server's
segmenter (at most `segment_tokens` tokens each) and tokenized segment by
segment, as the server does, stored as three flat arrays:

    tokens             uint16 [all segment tokens]     (SmolLM2's vocabulary has 49,152 ids)
    segment_lengths    uint16 [segments]               tokens of each segment, in order
    document_segments  int64  [documents]              segments of each document, in order

`Sampler` draws training examples from it of the kind soft.examples draws
from text: a run of consecutive segments of about ctx_min..ctx_max tokens
(the context), the next `continuation` tokens, and a task. Examples start at
a segment boundary, as a served context does.
"""

from bisect import bisect_right

import numpy as np

from ..segmenter import segment_text


def build(docs: dict[str, str], tok, segment_tokens: int) -> dict[str, np.ndarray]:
    """The shard arrays of `docs` (name -> text), documents in name order."""
    tokens, lengths, text_at, per_doc, text, per_doc_text = [], [], [], [], [], []
    for name in sorted(docs):
        enc = tok(docs[name], add_special_tokens=False, return_offsets_mapping=True)
        ends = [e for _, e in enc["offset_mapping"]]
        n = 0
        for seg in segment_text(docs[name], tok, segment_tokens):
            ids = tok(seg.text, add_special_tokens=False)["input_ids"]
            if ids:
                tokens += ids
                lengths.append(len(ids))
                text_at.append(len(text) + bisect_right(ends, seg.start))  # the text token holding its start
                n += 1
        per_doc.append(n)
        text += enc["input_ids"]
        per_doc_text.append(len(enc["input_ids"]))
    if max(tokens + text, default=0) >= 1 << 16:
        raise ValueError("token ids do not fit uint16")
    u16, i64 = np.uint16, np.int64
    return {"tokens": np.array(tokens, u16), "segment_lengths": np.array(lengths, u16),
            "segment_text_at": np.array(text_at, i64), "document_segments": np.array(per_doc, i64),
            "text_tokens": np.array(text, u16), "document_tokens": np.array(per_doc_text, i64)}


def save(path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def load(path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


class Sampler:
    """Examples from a shard, fixed by (seed, step): a resumed run sees the
    batches it would have seen."""

    def __init__(self, arrays: dict[str, np.ndarray], seed: int, ctx_min: int, ctx_max: int,
                 continuation: int, rec_share: float):
        self.tokens, self.text = arrays["tokens"], arrays["text_tokens"]
        lengths = arrays["segment_lengths"].astype(np.int64)
        self.seg_start = np.concatenate([[0], np.cumsum(lengths)])  # [segments + 1]: offsets in tokens
        self.text_at = arrays["segment_text_at"]  # [segments]: offsets in text
        self.doc_first = np.concatenate([[0], np.cumsum(arrays["document_segments"])])  # [docs + 1]
        self.doc_text_end = np.cumsum(arrays["document_tokens"])  # [docs]
        doc_tokens = self.seg_start[self.doc_first[1:]] - self.seg_start[self.doc_first[:-1]]
        self.doc_p = doc_tokens / doc_tokens.sum()  # documents in proportion to their length
        self.seed, self.ctx_min, self.ctx_max = seed, ctx_min, ctx_max
        self.continuation, self.rec_share = continuation, rec_share

    def batch(self, step: int, n: int) -> list[dict]:
        rng = np.random.default_rng([self.seed, step])
        out = []
        while len(out) < n:
            d = rng.choice(len(self.doc_p), p=self.doc_p)
            first, end = self.doc_first[d], self.doc_first[d + 1]
            if end == first:
                continue
            want = rng.integers(self.ctx_min, self.ctx_max + 1)
            s = e = int(rng.integers(first, end))
            while e < end and self.seg_start[e + 1] - self.seg_start[s] <= want:
                e += 1
            if e == s or e == end:
                continue  # the first segment alone is too long, or nothing follows the context
            a, b = self.text_at[s], self.text_at[e]  # the context in the text's tokens: [a, b)
            if b <= a or b + self.continuation > self.doc_text_end[d]:
                continue
            segments = [self.tokens[self.seg_start[j] : self.seg_start[j + 1]].tolist() for j in range(s, e)]
            out.append({
                "segments": segments,
                "context_ids": self.text[a:b].tolist(),
                "continuation": self.text[b : b + self.continuation].tolist(),
                "task": "rec" if rng.random() < self.rec_share else "cont",
            })
        return out

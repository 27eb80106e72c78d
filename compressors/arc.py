"""arc: each segment becomes pooled soft tokens a frozen decoder reads.

ARC-Encoder (Pilchen, Grave, Perez; kyutai, arXiv 2510.20535) compresses a
context into x times fewer vectors in a decoder's input-embedding space with
an encoder made from an LLM, so the unchanged decoder reads them in place of
the context's token embeddings. Here the encoder is complm's, which already
puts a segment into rows at x2 (issue 25): its concept embeddings (CEs), one
per 2 tokens, are averaged over adjacent groups of x / 2 and refined by a
small projector:

    ce    = complm's CEs of the segment (the decoder + LoRA + head)   [ceil(n / 2), D]
    m_r   = mean of CEs r*x/2 .. (r+1)*x/2 - 1                        [ceil(n / x), D]
    z_r   = m_r + b_x                      b_x: a learned row per factor
    row_r = z_r + W2 gelu(W1 z_r)          W2 starts at zero: untrained, the rows are the averaged CEs

and after each context's rows one learned <Cont> row (complm's), which
tells the decoder to go on from the context (training also learns a <Rec>
row, "repeat the context", used only there and in the evaluation). The
decoder is SmolLM2-135M-Instruct. x (ArcParams.pooling_factor) is 4 by
default; one set of weights serves every factor in ArcConfig.factors (2, 4
and 8 for the shipped ones), trained on mixed factors at once (ARC's
appendix: a model trained at one factor and fine-tuned to another
generalises badly).

Choices where ARC leaves details open (or where we differ):
- Segments of at most 40 tokens (ArcConfig.segment_tokens; complm's own
  are 20), cut by the shared segmenter and compressed one by one (ARC
  compresses a whole context), so every segment's rows are cached and
  reused in any context.
- Pooling averages complm's CEs instead of pooling queries inside the
  encoder's last block: the CEs already carry the text, and the average is
  a free baseline that training starts from.
- The cache holds every factor's rows of a segment in one value: the CEs
  are made once per segment (one encoder pass) and pooled for each factor,
  so a request at another factor is still all cache hits.
- The server folds complm's LoRA into the layers it adapts (one matmul
  each); it never reads the rows with that decoder.

Training: compressors/training/train_arc.py (CPU) and
compressors/training/device.py (GPU). The math: compressors/arc_model.py.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from segpress.v1 import segpress_pb2 as pb

from .arc_model import DEFAULT_WEIGHTS, load_model
from .base import (ContextParts, Encoded, InvalidParams, Kind, Rendered, Segment, check_decoder,
                   check_output_dtype, check_rows, length_sorted_batches, render_rows, soft_identity,
                   task_row)
from .complm import OUTPUT_DTYPES
from .engines import resolve_dtype
from .models import SMOLLM2
from .segmenter import count_tokens, segment_text

NAME = "arc"
DEFAULT_FACTOR = 4


@dataclass
class Params:
    pooling_factor: int = DEFAULT_FACTOR  # tokens per row
    output_dtype: str = "float32"  # element type of the returned tensors
    decoder: str = ""  # the decoder the caller will use; "" = ours

    @classmethod
    def from_proto(cls, req: pb.CompressRequest) -> "Params":
        p = req.arc
        return cls(pooling_factor=p.pooling_factor or DEFAULT_FACTOR,
                   output_dtype=OUTPUT_DTYPES.get(p.output_dtype, f"DType value {p.output_dtype}"),
                   decoder=p.decoder)

    def check(self) -> None:
        check_output_dtype(NAME, self.output_dtype, sorted(set(OUTPUT_DTYPES.values())))


def rows_name(factor: int) -> str:
    """The name of a segment's rows at pooling `factor` in its cached value."""
    return f"x{factor}"


class Arc:
    name = NAME
    kind = Kind.SOFT_TOKENS
    output = "tensor"
    Params = Params
    limits: dict[str, int] = {}

    def __init__(self, decoder_dir: str | Path, weights: str | Path = DEFAULT_WEIGHTS,
                 device: str = "cpu", batch_size: int = 32, dtype: str = "float32"):
        self.dtype = resolve_dtype(dtype, device)
        # The server only compresses (the caller's decoder reads the rows),
        # so complm's LoRA is folded into the layers it adapts: one matmul each.
        self.model, self.tokenizer = load_model(decoder_dir, weights, self.dtype, device, fold=True)
        self.config = self.model.config
        # Every factor the weights were trained for is served (Info lists them).
        self.pooling_factors = self.config.factors
        if DEFAULT_FACTOR not in self.pooling_factors:
            raise ValueError(f"arc weights {weights} serve pooling factors {self.pooling_factors}, "
                             f"not the default {DEFAULT_FACTOR}")
        self.batch_size = batch_size
        self.max_segment_tokens = self.config.segment_tokens
        self.hidden_size = self.model.decoder.config.hidden_size
        self.decoder_id = SMOLLM2
        self.decoder_fingerprint, self.model_id, self.fingerprint = soft_identity(NAME, decoder_dir, weights)
        # The rows depend on the decoder, the trained weights and the precision.
        self.cache_id = f"{self.fingerprint}:{self.dtype}"
        # The <Cont> row every context ends with, float32 [1, hidden].
        self.cont_row = task_row(self.model, "cont")
        if self.cont_row is None:
            raise ValueError(f"arc weights {weights} have no <Cont> row: they were made from complm "
                             "weights trained without task rows; train arc from the shipped complm weights")
        # The <Rec> row (repeat the context): training and evaluation only.
        self.rec_row = task_row(self.model, "rec")

    def check_params(self, params: Params) -> None:
        """A trained pooling factor, and the decoder the rows are made for."""
        if params.pooling_factor not in self.pooling_factors:
            raise InvalidParams(
                f"arc.pooling_factor is {params.pooling_factor}, but this server's arc weights are "
                f"trained for {', '.join(map(str, self.pooling_factors))} tokens per row "
                f"(0 means {DEFAULT_FACTOR})")
        check_decoder(self, params.decoder, "rows")

    def budget(self, params: Params, total_tokens: int) -> None:
        """No token budget: a segment's rows are fixed by the pooling factor."""
        return None

    def segment(self, text: str) -> list[Segment]:
        return segment_text(text, self.tokenizer, self.max_segment_tokens)

    def count_tokens(self, text: str, stop_after: int) -> int:
        return count_tokens(text, self.tokenizer, stop_after)

    def rows(self, segment: Segment, params: Params) -> int:
        """Rows of `segment` at the request's pooling factor."""
        n = len(self.tokenizer(segment.text, add_special_tokens=False)["input_ids"])
        return self.model.n_rows(n, params.pooling_factor)

    def end_rows(self) -> int:
        return 1  # <Cont>

    def check_encoded(self, encoded: Encoded, segment: Segment) -> bool:
        """For every factor x of the weights, "x<x>": float32 [ceil(tokens /
        x), hidden], finite: the rows encode makes of this segment's text."""
        n = len(self.tokenizer(segment.text, add_special_tokens=False)["input_ids"])
        return set(encoded) == {rows_name(f) for f in self.pooling_factors} and all(
            check_rows({rows_name(f): encoded[rows_name(f)]}, rows_name(f), self.model.n_rows(n, f),
                       self.hidden_size)
            for f in self.pooling_factors)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> list[Encoded]:
        """Per segment, for every factor x of the weights: "x<x>" float32
        [ceil(tokens / x), hidden], all from one encoder pass."""
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        out: list[Encoded] = [{} for _ in ids]
        for batch in length_sorted_batches([len(i) for i in ids], self.batch_size):
            for f, per_segment in self.model.rows_every_factor([ids[i] for i in batch]).items():
                for i, r in zip(batch, per_segment):
                    out[i][rows_name(f)] = r.float().cpu().numpy()
        return out

    def render(self, contexts: list[ContextParts], params: Params, query: str | None = None) -> list[Rendered]:
        """Each context's rows at the request's factor, its segments' in
        order, then the <Cont> row: float32 [rows + 1, hidden] (no rows at
        all for a context with no segment left). The <Cont> row is counted
        with the context's last segment. The pipeline converts the rows to
        params.output_dtype for the wire."""
        return render_rows(contexts, rows_name(params.pooling_factor), self.hidden_size, self.cont_row)

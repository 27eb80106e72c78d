"""CompLLM: each segment becomes concept embeddings (CEs) a frozen decoder reads.

CompLLM (Berton et al., Amazon 2025, arXiv 2509.19228) cuts the context into
short segments and compresses each one on its own into CEs: vectors in the
decoder's input-embedding space, C times fewer than the segment's tokens. The
compressor is the decoder itself with a LoRA and a linear head; the decoder
that later reads the CEs (in place of the text's token embeddings) is the same
model without the LoRA, frozen and unchanged. Segments are independent, so
compressing costs O(n * S) for n tokens and every segment's CEs are cached.

How one segment of n tokens t_1..t_n becomes k = ceil(n / C) CEs:

    x = [E(t_1) .. E(t_n), E(eos) x k]        E: the decoder's token embeddings
    h = decoder_with_LoRA(x)                  final hidden states (after the
                                              final norm), causal attention
    CE_j = W h[n + j] + b (+ m_j),  j < k     the k slot positions; each slot
                                              sees the whole segment
    m_j = mean(E(t_jC+1) .. E(t_jC+C)),       with start "mean": the CE starts
          rescaled to E's RMS                 as its tokens' mean embedding

Choices where the paper leaves details open (or where we differ):
- Segments: at most S = 20 tokens (the paper's S), cut by the shared
  segmenter, which prefers sentence ends and whitespace. Each segment is
  tokenized on its own, so the same text gives the same CEs in any context.
- Slots: k copies of the eos token after the segment, as in the paper;
  rotary positions tell them apart. C = 2 (CompLLMConfig.tokens_per_ce) is
  fixed at training time: it is a property of the trained weights, not a
  request parameter, so what is cached does not depend on the request.
- LoRA on every layer (CompLLMConfig: rank, and attention only or the MLP
  too). Head: one Linear(hidden, hidden) with bias, zero-initialised, so the
  CEs start at 0 ("zero") or at their tokens' mean embedding ("mean").
- Task rows (weights trained with them, CompLLMConfig.tasks): a learned
  <Cont> row after each context's CEs tells the decoder to go on from the
  context (a <Rec> row, "repeat the context", is used in training and the
  evaluation). The response carries <Cont> as the context's last row.
- Training (compressors/training/train_complm.py): cross-entropy through the
  frozen decoder on reconstruction (the context from its CEs) and
  continuation (the next tokens), as ICAE and ARC-Encoder do; the paper
  distils hidden states on answer tokens.

What the cache holds per segment: the CEs as float32 [k, hidden]; `render`
concatenates a context's segments and reports each segment's row count.
The model itself (LoRA, head, loading) is compressors/complm_model.py.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from segpress.v1 import segpress_pb2 as pb

from .base import (ContextParts, Encoded, Kind, Rendered, Segment, check_decoder,
                   check_output_dtype, check_rows, length_sorted_batches, render_rows,
                   soft_identity, task_row)
from .complm_model import DEFAULT_WEIGHTS, load_model
from .engines import resolve_dtype
from .models import SMOLLM2
from .segmenter import count_tokens, segment_text

NAME = "complm"
# Element types the response tensor can have (proto DType -> name).
OUTPUT_DTYPES = {pb.DTYPE_UNSPECIFIED: "float32", pb.DTYPE_FLOAT32: "float32",
                 pb.DTYPE_FLOAT16: "float16", pb.DTYPE_BFLOAT16: "bfloat16"}


@dataclass
class Params:
    output_dtype: str = "float32"  # element type of the returned tensors
    decoder: str = ""  # the decoder the caller will use; "" = ours

    @classmethod
    def from_proto(cls, req: pb.CompressRequest) -> "Params":
        p = req.complm
        return cls(output_dtype=OUTPUT_DTYPES.get(p.output_dtype, f"DType value {p.output_dtype}"),
                   decoder=p.decoder)

    def check(self) -> None:
        check_output_dtype(NAME, self.output_dtype, sorted(set(OUTPUT_DTYPES.values())))


class CompLLM:
    name = NAME
    kind = Kind.SOFT_TOKENS
    output = "tensor"
    Params = Params
    limits: dict[str, int] = {}

    def __init__(self, decoder_dir: str | Path, weights: str | Path = DEFAULT_WEIGHTS,
                 device: str = "cpu", batch_size: int = 64, dtype: str = "float32"):
        self.dtype = resolve_dtype(dtype, device)
        # The server only compresses (the caller's decoder reads the rows),
        # so the LoRA is folded into the layers it adapts: one matmul each.
        self.model, self.tokenizer = load_model(decoder_dir, weights, self.dtype, device, fold=True)
        self.config = self.model.config
        self.batch_size = batch_size
        self.max_segment_tokens = self.config.segment_tokens
        self.hidden_size = self.model.decoder.config.hidden_size
        self.decoder_id = SMOLLM2
        self.decoder_fingerprint, self.model_id, self.fingerprint = soft_identity(NAME, decoder_dir, weights)
        # The CEs depend on the decoder, the trained weights and the precision.
        self.cache_id = f"{self.fingerprint}:{self.dtype}"
        # Weights trained with task rows: the <Cont> row every context ends
        # with, and the <Rec> row (repeat the context: training and
        # evaluation only), float32 [1, hidden]; None for weights without them.
        self.cont_row, self.rec_row = task_row(self.model, "cont"), task_row(self.model, "rec")

    def check_params(self, params: Params) -> None:
        """The request's decoder must be the one the CEs are made for."""
        check_decoder(self, params.decoder, "concept embeddings")

    def budget(self, params: Params, total_tokens: int) -> None:
        """No token budget: the rate (tokens per CE) is fixed by the weights."""
        return None

    def segment(self, text: str) -> list[Segment]:
        return segment_text(text, self.tokenizer, self.max_segment_tokens)

    def count_tokens(self, text: str, stop_after: int) -> int:
        return count_tokens(text, self.tokenizer, stop_after)

    def rows(self, segment: Segment, params: Params) -> int:
        """CEs of `segment`: ceil(tokens / C)."""
        return self.model.slots(len(self.tokenizer(segment.text, add_special_tokens=False)["input_ids"]))

    def end_rows(self) -> int:
        return 0 if self.cont_row is None else 1

    def check_encoded(self, encoded: Encoded, segment: Segment) -> bool:
        """{"ces": float32 [ceil(tokens / C), hidden]}, finite: the rows
        encode makes of this segment's text."""
        ids = self.tokenizer(segment.text, add_special_tokens=False)["input_ids"]
        return check_rows(encoded, "ces", self.model.slots(len(ids)), self.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> list[Encoded]:
        """Per segment: {"ces": float32 [ceil(tokens / C), hidden]}."""
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        out: list = [None] * len(ids)
        for batch in length_sorted_batches([len(i) for i in ids], self.batch_size):
            for i, ce in zip(batch, self.model.concept_embeddings([ids[i] for i in batch])):
                out[i] = {"ces": ce.float().cpu().numpy()}
        return out

    def render(self, contexts: list[ContextParts], params: Params, query: str | None = None) -> list[Rendered]:
        """Each context's CEs, its segments' in order, then the <Cont> row
        when the weights have one (counted with the last segment): float32
        [rows, hidden]. The pipeline converts them to params.output_dtype for
        the wire."""
        return render_rows(contexts, "ces", self.hidden_size, self.cont_row)

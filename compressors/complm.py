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
    m_j = mean(E(t_jC+1) .. E(t_jC+C)),       the CE starts as its tokens'
          rescaled to E's RMS                 mean embedding

Choices where the paper leaves details open (or where we differ):
- Segments: at most S = 20 tokens (the paper's S), cut by the shared
  segmenter, which prefers sentence ends and whitespace. Each segment is
  tokenized on its own, so the same text gives the same CEs in any context.
- Digits pass verbatim (ours; compressors/soft_tokens.py): a number's
  digit tokens are rows of their own, the decoder's input embeddings of
  them, and each run of the segment's other tokens is compressed as above
  on its own. The CEs lost numbers (dev needle codes: 0 of 8 answered).
  Names pass so too when a request asks (CompLLMParams.verbatim_names;
  soft_tokens.name_mask), in a variant cached apart.
- Slots: k copies of the eos token after the segment, as in the paper;
  rotary positions tell them apart. C = 2 (CompLLMConfig.tokens_per_ce) is
  fixed at training time: it is a property of the trained weights, not a
  request parameter, so what is cached does not depend on the request.
- LoRA on every layer (CompLLMConfig: rank, and attention only or the MLP
  too). Head: one Linear(hidden, hidden) with bias, zero-initialised, so the
  CEs start at their tokens' mean embedding.
- Task rows: a learned
  <Cont> row after each context's CEs tells the decoder to go on from the
  context (a <Rec> row, "repeat the context", is used in training and the
  evaluation). The response carries <Cont> as the context's last row.
- Training (compressors/training/train_complm.py): cross-entropy through the
  frozen decoder on reconstruction (the context from its CEs) and
  continuation (the next tokens), as ICAE and ARC-Encoder do; the paper
  distils hidden states on answer tokens.

What the cache holds per segment: its rows as float32 [rows, hidden]; `render`
concatenates a context's segments and reports each segment's row count.
The model itself (LoRA, head, loading) is compressors/complm_model.py.
"""

from dataclasses import dataclass

from segpress.v1 import segpress_pb2 as pb

from .complm_model import DEFAULT_WEIGHTS, load_model
from .soft_tokens import SoftTokens, check_output_dtype, check_refine_steps, output_dtype

NAME = "complm"


@dataclass
class Params:
    output_dtype: str = "float32"  # element type of the returned tensors
    decoder: str = ""  # the decoder the caller will use; "" = ours
    refine_steps: int = 0  # optimizer steps on each segment's CEs (compressors/refine.py)
    verbatim_names: bool = False  # names pass verbatim too (compressors/soft_tokens.py)

    @classmethod
    def from_proto(cls, req: pb.CompressRequest) -> "Params":
        p = req.complm
        return cls(output_dtype=output_dtype(p.output_dtype), decoder=p.decoder,
                   refine_steps=p.refine_steps, verbatim_names=p.verbatim_names)

    def check(self) -> None:
        check_output_dtype(NAME, self.output_dtype)
        check_refine_steps(NAME, self.refine_steps)


class CompLLM(SoftTokens):
    """A segment's value: {"ces": float32 [rows, hidden]}, ceil(n / C) CEs
    for each run of n tokens that are not digits and one row per digit."""

    name = NAME
    Params = Params
    what = "concept embeddings"
    load_model = staticmethod(load_model)

    def __init__(self, decoder_dir, weights=DEFAULT_WEIGHTS, device: str = "cpu",
                 batch_size: int = 64, dtype: str = "float32", max_refine_steps: int = 0):
        super().__init__(decoder_dir, weights, device, batch_size, dtype, max_refine_steps)

    def value_rows(self, n_tokens: int) -> dict[str, int]:
        return {"ces": self.model.slots(n_tokens)}

    def encode_batch(self, ids):
        return {"ces": self.model.concept_embeddings(ids)}

    def rows_name(self, params: Params) -> str:
        return "ces"

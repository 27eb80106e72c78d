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
- Digits pass verbatim, as in complm (compressors/soft_tokens.py): one row
  per digit token, the decoder's input embedding of it, at every factor;
  each run of the other tokens is pooled as above on its own.
- Names too, when a request asks (ArcParams.verbatim_names): each token
  of a capitalised word that does not start a sentence is one row, as a
  digit is (soft_tokens.name_mask); those rows are cached apart.

Training: compressors/training/train_arc.py (CPU) and
compressors/training/device.py (GPU). The math: compressors/arc_model.py.
"""

from dataclasses import dataclass

from segpress.v1 import segpress_pb2 as pb

from .arc_model import DEFAULT_WEIGHTS, load_model
from .base import InvalidParams
from .soft_tokens import SoftTokens, check_output_dtype, check_refine_steps, output_dtype

NAME = "arc"
DEFAULT_FACTOR = 4


@dataclass
class Params:
    pooling_factor: int = DEFAULT_FACTOR  # tokens per row
    output_dtype: str = "float32"  # element type of the returned tensors
    decoder: str = ""  # the decoder the caller will use; "" = ours
    verbatim_names: bool = False  # names pass verbatim too (compressors/soft_tokens.py)
    # Optimizer steps on each segment's rows (compressors/refine.py): for
    # `segpress eval arc --refine-steps` only; not served (docs/soft-tokens.md).
    refine_steps: int = 0

    @classmethod
    def from_proto(cls, req: pb.CompressRequest) -> "Params":
        p = req.arc
        return cls(pooling_factor=p.pooling_factor or DEFAULT_FACTOR,
                   output_dtype=output_dtype(p.output_dtype), decoder=p.decoder,
                   verbatim_names=p.verbatim_names)

    def check(self) -> None:
        check_output_dtype(NAME, self.output_dtype)
        check_refine_steps(NAME, self.refine_steps)


def rows_name(factor: int) -> str:
    """The name of a segment's rows at pooling `factor` in its cached value."""
    return f"x{factor}"


class Arc(SoftTokens):
    """A segment's value: for every factor x of the weights, "x<x>": float32
    [rows, hidden], ceil(n / x) rows for each run of n tokens that are not
    digits and one row per digit, all from one encoder pass."""

    name = NAME
    Params = Params
    load_model = staticmethod(load_model)

    def __init__(self, decoder_dir, weights=DEFAULT_WEIGHTS, device: str = "cpu",
                 batch_size: int = 32, dtype: str = "float32", max_refine_steps: int = 0):
        super().__init__(decoder_dir, weights, device, batch_size, dtype, max_refine_steps)
        # Every factor the weights were trained for is served (Info lists them).
        self.pooling_factors = tuple(self.config.factors)
        if DEFAULT_FACTOR not in self.pooling_factors:
            raise ValueError(f"arc weights {weights} serve pooling factors {self.pooling_factors}, "
                             f"not the default {DEFAULT_FACTOR}")

    def check_params(self, params: Params) -> None:
        """A trained pooling factor, and the decoder the rows are made for."""
        if params.pooling_factor not in self.pooling_factors:
            raise InvalidParams(
                f"arc.pooling_factor is {params.pooling_factor}, but this server's arc weights are "
                f"trained for {', '.join(map(str, self.pooling_factors))} tokens per row "
                f"(0 means {DEFAULT_FACTOR})")
        super().check_params(params)

    def value_rows(self, n_tokens: int) -> dict[str, int]:
        return {rows_name(f): self.model.n_rows(n_tokens, f) for f in self.pooling_factors}

    def encode_batch(self, ids):
        return {rows_name(f): rows for f, rows in self.model.rows_every_factor(ids).items()}

    def rows_name(self, params: Params) -> str:
        return rows_name(params.pooling_factor)

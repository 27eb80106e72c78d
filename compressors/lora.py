"""LoRA (Hu et al., arXiv 2106.09685): a frozen linear layer plus a trained
low-rank update, which can be switched off so the same module is the base
layer again. complm and arc both train their compressor this way on top of
the decoder they write for."""

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * B A x while `enabled`; base stays frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.empty(rank, base.in_features))  # [r, in]
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))  # [out, r]: starts as a no-op
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale = alpha / rank
        self.enabled = True

    def forward(self, x):
        y = self.base(x)
        if self.enabled:
            y = y + (x.to(self.A.dtype) @ self.A.T @ self.B.T).to(y.dtype) * self.scale
        return y

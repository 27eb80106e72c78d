"""Soft tokens: a response's Tensor to numpy and torch, split per segment.

Soft-token compressors (planned) return CompressResponse.tensor. This
example builds such a response the way a server does, so it runs without one.

    python clients/python/examples/tensors.py
"""

import numpy as np

from segpress import pb
from segpress.tensors import from_numpy, split_segments, to_numpy, to_torch

# 5 soft tokens of width 4, as bfloat16, in two segments: rows 0-1 and 2-4.
vectors = np.arange(20, dtype=np.float32).reshape(5, 4) / 8
resp = pb.CompressResponse(tensor=from_numpy(vectors, "bfloat16", segment_offsets=[0, 2, 5]))

rows = to_numpy(resp.tensor)             # float32 [rows, hidden]; bfloat16 is widened exactly
segments = split_segments(resp.tensor)   # one [rows, hidden] array per segment
embeds = to_torch(resp.tensor)           # torch.bfloat16 [rows, hidden]; needs torch

print(rows.dtype, rows.shape, [s.shape for s in segments], embeds.dtype)
assert (rows == vectors).all()  # these values fit bfloat16 exactly

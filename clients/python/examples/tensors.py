"""Soft tokens: a response's Tensor to numpy and torch, split per segment and
per context.

Soft-token compressors (complm) return CompressResponse.tensor: every
context's rows, once, concatenated; context i owns rows
[row_start, row_end) of it. This example builds such a response the way a
server does, so it runs without one.

    python clients/python/examples/tensors.py
"""

import numpy as np

from segpress import pb
from segpress.tensors import context_rows, context_tensor, from_numpy, split_segments, to_numpy, to_torch

# 5 soft tokens of width 4, as bfloat16, in two segments: rows 0-1 and 2-4,
# from two contexts of one segment each.
vectors = np.arange(20, dtype=np.float32).reshape(5, 4) / 8
resp = pb.CompressResponse(
    tensor=from_numpy(vectors, "bfloat16", segment_offsets=[0, 2, 5]),
    contexts=[pb.CompressedContext(row_start=0, row_end=2, segment_start=0, segment_end=1),
              pb.CompressedContext(row_start=2, row_end=5, segment_start=1, segment_end=2)])

rows = to_numpy(resp.tensor)             # float32 [rows, hidden]; bfloat16 is widened exactly
segments = split_segments(resp.tensor)   # one [rows, hidden] array per segment
embeds = to_torch(resp.tensor)           # torch.bfloat16 [rows, hidden]; needs torch
second = context_rows(resp, 1)           # float32 [rows of context 1, hidden]
own = context_tensor(resp, 1)            # context 1's rows as a Tensor of their own (wire dtype)

print(rows.dtype, rows.shape, [s.shape for s in segments], embeds.dtype, second.shape)
assert (rows == vectors).all()  # these values fit bfloat16 exactly
assert (second == vectors[2:]).all() and list(own.shape) == [3, 4] and list(own.segment_offsets) == [0, 3]

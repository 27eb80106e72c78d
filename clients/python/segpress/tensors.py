"""Soft-token tensors (`segpress.v1.Tensor`) to and from numpy and torch.

A Tensor holds little-endian, row-major elements of `dtype`, `shape`
([rows, hidden] for soft tokens) and `segment_offsets` (segment i owns rows
[offsets[i], offsets[i+1])). numpy has no bfloat16, so `to_numpy` widens
bfloat16 to float32, which is exact: a bfloat16 is the top half of a
float32. torch is imported only by `to_torch`, so this module works without it.

A soft-token CompressResponse sends every row once, in `resp.tensor`;
context i owns rows [row_start, row_end) of it (`resp.contexts[i]`).
`context_rows` and `context_tensor` give one context's part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .v1 import segpress_pb2 as pb

if TYPE_CHECKING:
    import torch

# Storage of each dtype: bfloat16 as its raw 16 bits.
_STORAGE: dict[int, np.dtype[Any]] = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_BFLOAT16: np.dtype("<u2"),
}
# dtype names, as the client and the server spell them.
DTYPES: dict[str, int] = {"float32": pb.DTYPE_FLOAT32, "float16": pb.DTYPE_FLOAT16, "bfloat16": pb.DTYPE_BFLOAT16}


def _raw(tensor: pb.Tensor) -> np.ndarray:
    """The elements in their storage dtype, shaped; checks dtype and size."""
    storage = _STORAGE.get(tensor.dtype)
    if storage is None:
        raise ValueError(f"unsupported tensor dtype {pb.DType.Name(tensor.dtype)}")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"negative dimension in tensor shape {list(shape)}")
    expected = math.prod(shape) * storage.itemsize
    if len(tensor.data) != expected:
        raise ValueError(f"tensor data has {len(tensor.data)} bytes, shape {list(shape)} of "
                         f"{pb.DType.Name(tensor.dtype)} needs {expected}")
    return np.frombuffer(tensor.data, dtype=storage).reshape(shape)


def to_numpy(tensor: pb.Tensor) -> np.ndarray:
    """The tensor as a numpy array of its shape: float32 for FLOAT32 and
    BFLOAT16, float16 for FLOAT16. Read-only for FLOAT32 and FLOAT16 (a view
    of the message's bytes); copy it to modify it."""
    raw = _raw(tensor)
    if tensor.dtype == pb.DTYPE_BFLOAT16:
        return (raw.astype("<u4") << 16).view("<f4")
    return raw


def to_torch(tensor: pb.Tensor) -> torch.Tensor:
    """The tensor as a torch tensor of its own dtype (bfloat16 stays
    bfloat16). Needs torch installed."""
    import torch

    raw = _raw(tensor)
    native = raw.astype(raw.dtype.newbyteorder("="))  # a writable copy in host byte order
    if tensor.dtype == pb.DTYPE_BFLOAT16:
        return torch.from_numpy(native.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(native)


def split_segments(tensor: pb.Tensor) -> list[np.ndarray]:
    """`to_numpy(tensor)` cut into one [rows, hidden] array per segment."""
    rows = to_numpy(tensor)
    if rows.ndim != 2:
        raise ValueError(f"tensor shape {list(rows.shape)} is not [rows, hidden]")
    offsets = list(tensor.segment_offsets)
    if not offsets or offsets[0] != 0 or offsets[-1] != len(rows) \
            or any(a > b for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"segment_offsets {offsets} must rise from 0 to {len(rows)}")
    return [rows[a:b] for a, b in zip(offsets, offsets[1:])]


def context_tensor(resp: pb.CompressResponse, i: int) -> pb.Tensor:
    """Context i's soft tokens as a Tensor of their own: rows
    [row_start, row_end) of `resp.tensor` ([rows, hidden], same dtype and
    decoder), segment_offsets counted from its first row."""
    t, ctx = resp.tensor, resp.contexts[i]
    raw = _raw(t)  # checks dtype and size
    if raw.ndim != 2:
        raise ValueError(f"tensor shape {list(raw.shape)} is not [rows, hidden]")
    start, end = ctx.row_start, ctx.row_end
    first, last = ctx.segment_start, ctx.segment_end
    offsets = list(t.segment_offsets)
    if not (0 <= start <= end <= len(raw) and 0 <= first <= last < len(offsets)
            and offsets[first] == start and offsets[last] == end):
        raise ValueError(f"context {i}: rows [{start}, {end}) and segments [{first}, {last}) "
                         f"do not fit a tensor of {len(raw)} rows with segment_offsets {offsets}")
    row_bytes = raw.shape[1] * raw.itemsize
    return pb.Tensor(dtype=t.dtype, shape=[end - start, raw.shape[1]],
                     data=t.data[start * row_bytes : end * row_bytes],
                     segment_offsets=[o - start for o in offsets[first : last + 1]],
                     decoder_id=t.decoder_id, decoder_fingerprint=t.decoder_fingerprint)


def context_rows(resp: pb.CompressResponse, i: int) -> np.ndarray:
    """Context i's soft tokens as numpy [rows, hidden], as `to_numpy` gives
    them: rows [row_start, row_end) of `resp.tensor`."""
    return to_numpy(context_tensor(resp, i))


def from_numpy(array: np.ndarray, dtype: str | pb.DType.ValueType = "float32",
               segment_offsets: Sequence[int] = ()) -> pb.Tensor:
    """A Tensor holding `array` converted to `dtype` ("float32", "float16",
    "bfloat16" or a DType value); bfloat16 rounds to nearest even."""
    code = DTYPES.get(dtype) if isinstance(dtype, str) else dtype
    if code not in _STORAGE:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    array = np.asarray(array)
    if code == pb.DTYPE_BFLOAT16:
        f32 = np.ascontiguousarray(array, dtype="<f4")
        bits = f32.view("<u4").astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        data = np.where(np.isnan(f32), 0x7FC0, rounded).astype("<u2").tobytes()
    else:
        data = np.ascontiguousarray(array, dtype=_STORAGE[code]).tobytes()
    return pb.Tensor(dtype=pb.DType.ValueType(code), shape=array.shape, data=data, segment_offsets=segment_offsets)

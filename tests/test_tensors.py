"""segpress.tensors: soft-token Tensor messages to and from numpy and torch,
checked on hand-built little-endian bytes."""

import subprocess
import sys

import numpy as np
import pytest

from segpress import pb
from segpress.tensors import context_rows, context_tensor, from_numpy, split_segments, to_numpy, to_torch

# Two rows of three elements per dtype, with each format's edge values.
HAND_BUILT = {
    "float32": (pb.DTYPE_FLOAT32, bytes([
        0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0, 0x00, 0x00, 0x00, 0x3F,  # 1, -2, 0.5
        0x00, 0x00, 0x80, 0x7F, 0x01, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x7F, 0x7F,  # inf, 2^-149, max
    ]), [[1, -2, 0.5], [np.inf, 2.0 ** -149, np.finfo(np.float32).max]], np.float32),
    "float16": (pb.DTYPE_FLOAT16, bytes([
        0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38,  # 1, -2, 0.5
        0xFF, 0x7B, 0x01, 0x00, 0x00, 0xFC,  # 65504, 2^-24, -inf
    ]), [[1, -2, 0.5], [65504, 2.0 ** -24, -np.inf]], np.float16),
    "bfloat16": (pb.DTYPE_BFLOAT16, bytes([
        0x80, 0x3F, 0x00, 0xC0, 0x00, 0x3F,  # 1, -2, 0.5
        0x49, 0x40, 0x80, 0x7F, 0x80, 0x00,  # 3.140625, inf, 2^-126
    ]), [[1, -2, 0.5], [3.140625, np.inf, 2.0 ** -126]], np.float32),
}


@pytest.mark.parametrize("name", HAND_BUILT)
def test_to_numpy_decodes_hand_built_bytes(name):
    dtype, data, expected, np_dtype = HAND_BUILT[name]
    arr = to_numpy(pb.Tensor(dtype=dtype, shape=[2, 3], data=data))
    assert arr.dtype == np_dtype and arr.shape == (2, 3)
    np.testing.assert_array_equal(arr, np.array(expected, dtype=np.float64).astype(np_dtype))


@pytest.mark.parametrize("name", HAND_BUILT)
def test_from_numpy_encodes_the_same_bytes(name):
    dtype, data, expected, _ = HAND_BUILT[name]
    t = from_numpy(np.array(expected, dtype=np.float32), name, segment_offsets=[0, 2])
    assert (t.dtype, list(t.shape), t.data, list(t.segment_offsets)) == (dtype, [2, 3], data, [0, 2])


def test_bfloat16_rounds_to_nearest_even_and_keeps_nan():
    one_ulp = 2.0 ** -7  # bfloat16 has 7 fraction bits
    values = np.array([1 + one_ulp / 2, 1 + 1.5 * one_ulp, 1 + 0.6 * one_ulp, np.nan], np.float32)
    back = to_numpy(from_numpy(values, "bfloat16"))
    np.testing.assert_array_equal(back[:3], [1.0, 1 + 2 * one_ulp, 1 + one_ulp])  # ties go even
    assert np.isnan(back[3])


def test_to_torch_keeps_the_dtype():
    torch = pytest.importorskip("torch")
    for name, torch_dtype in [("float32", torch.float32), ("float16", torch.float16),
                              ("bfloat16", torch.bfloat16)]:
        dtype, data, expected, _ = HAND_BUILT[name]
        t = to_torch(pb.Tensor(dtype=dtype, shape=[2, 3], data=data))
        assert t.dtype == torch_dtype and tuple(t.shape) == (2, 3)
        assert torch.equal(t.float(), torch.tensor(expected, dtype=torch.float32))
        t += 1  # writable: a copy, not a view of the message


def test_split_segments():
    t = from_numpy(np.arange(8, dtype=np.float32).reshape(4, 2), "float16", segment_offsets=[0, 1, 1, 4])
    segments = split_segments(t)
    assert [s.shape for s in segments] == [(1, 2), (0, 2), (3, 2)]
    np.testing.assert_array_equal(np.concatenate(segments), np.arange(8).reshape(4, 2))


@pytest.mark.parametrize("tensor,message", [
    (pb.Tensor(shape=[1], data=b"\0" * 4), "unsupported tensor dtype DTYPE_UNSPECIFIED"),
    (pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 2], data=b"\0" * 15), "has 15 bytes"),
    (pb.Tensor(dtype=pb.DTYPE_BFLOAT16, shape=[-1, 2], data=b""), "negative dimension"),
    (pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[4], data=b"\0" * 16, segment_offsets=[0, 4]), "not [rows, hidden]"),
    (pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 1], data=b"\0" * 8), "must rise from 0 to 2"),
    (pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 1], data=b"\0" * 8, segment_offsets=[0, 3, 2]), "must rise"),
    (pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 1], data=b"\0" * 8, segment_offsets=[0, 1]), "must rise"),
])
def test_malformed_tensors_are_value_errors(tensor, message):
    with pytest.raises(ValueError) as e:
        split_segments(tensor)
    assert message in str(e.value)


def two_contexts(dtype: str) -> tuple[np.ndarray, pb.CompressResponse]:
    """A response as a server sends it: 5 rows of width 3, context 0 with
    segments of rows [0,1) [1,2), context 1 with one segment of rows [2,5)."""
    rows = np.arange(15, dtype=np.float32).reshape(5, 3) / 4  # exact in every dtype
    t = from_numpy(rows, dtype, segment_offsets=[0, 1, 2, 5])
    t.decoder_id, t.decoder_fingerprint = "dec", "f" * 64
    return rows, pb.CompressResponse(tensor=t, contexts=[
        pb.CompressedContext(row_start=0, row_end=2, segment_start=0, segment_end=2, segments=2),
        pb.CompressedContext(row_start=2, row_end=5, segment_start=2, segment_end=3, segments=1)])


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_context_rows_and_tensor(dtype):
    rows, resp = two_contexts(dtype)
    assert np.array_equal(context_rows(resp, 0), rows[:2])
    assert np.array_equal(context_rows(resp, 1), rows[2:])
    t = context_tensor(resp, 0)
    assert (t.dtype, list(t.shape), t.decoder_id, t.decoder_fingerprint) == \
        (resp.tensor.dtype, [2, 3], "dec", "f" * 64)
    assert t.data == from_numpy(rows[:2], dtype).data  # the wire bytes, sliced
    assert [s.tolist() for s in split_segments(t)] == [rows[:1].tolist(), rows[1:2].tolist()]
    assert list(context_tensor(resp, 1).segment_offsets) == [0, 3]


@pytest.mark.parametrize("field, value", [
    ("row_end", 6), ("row_start", 3), ("row_start", -1), ("segment_end", 4),
    ("segment_start", -1), ("segment_start", 1),
])
def test_context_ranges_that_do_not_fit_are_value_errors(field, value):
    _, resp = two_contexts("float32")
    setattr(resp.contexts[1], field, value)
    with pytest.raises(ValueError, match="context 1: rows"):
        context_tensor(resp, 1)


def test_unknown_dtype_name():
    with pytest.raises(ValueError, match="dtype must be one of"):
        from_numpy(np.zeros(2), "int8")


def test_numpy_helpers_work_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None  # makes `import torch` fail\n"
        "import numpy as np\n"
        "from segpress.tensors import from_numpy, to_numpy, to_torch\n"
        "print(to_numpy(from_numpy(np.ones((2, 2)), 'bfloat16')).sum())\n"
        "try:\n"
        "    to_torch(from_numpy(np.ones(1)))\n"
        "except ImportError:\n"
        "    print('no torch')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["4.0", "no", "torch"]

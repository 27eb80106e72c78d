"""Value codec: an Encoded segment <-> bytes stored in Redis.

An encoded segment is a small set of named numpy arrays (for llmlingua2: word
spans, scores and token counts; for soft compressors: one tensor). The
compressor says what kind of value it stores (compressors.base.Kind, a small
int); the codec only checks it. Layout, all little-endian:

    magic    4 bytes  b"SGP1"
    version  u8       FORMAT_VERSION
    kind     u8       what the arrays mean (the compressor's Kind), checked on decode
    count    u16      number of arrays
    crc32    u32      zlib.crc32 of everything after the header
    then per array:
      name length u8, name (ascii)
      dtype code  u8  (see ARRAY_DTYPES), ndim u8, shape ndim x u32
      data        row-major bytes

A value with a wrong magic, version, kind or checksum decodes to None and the
caller treats it as a miss.
"""

import math
import struct
import zlib

import numpy as np

MAGIC = b"SGP1"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sBBHI")

# dtype code <-> numpy dtype (little-endian). bfloat16 travels as uint16 bits.
ARRAY_DTYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("<f2"),
    3: np.dtype("<u2"),  # bfloat16 bits
    4: np.dtype("<i4"),
    5: np.dtype("<u4"),
    6: np.dtype("<i8"),
    7: np.dtype("<u1"),
}
_CODES = {dt: code for code, dt in ARRAY_DTYPES.items()}


def encode(kind: int, arrays: dict[str, np.ndarray]) -> bytes:
    body = bytearray()
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        code = _CODES[np.dtype(dt).newbyteorder("<")]
        raw = name.encode("ascii")
        body += struct.pack("<B", len(raw)) + raw
        body += struct.pack("<BB", code, arr.ndim)
        body += struct.pack(f"<{arr.ndim}I", *arr.shape)
        body += arr.astype(ARRAY_DTYPES[code], copy=False).tobytes()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, int(kind), len(arrays), zlib.crc32(body))
    return header + bytes(body)


def decode(kind: int, value: bytes) -> dict[str, np.ndarray] | None:
    """The arrays, or None when the value is not a valid `kind` value."""
    try:
        magic, version, got_kind, count, crc = _HEADER.unpack_from(value, 0)
        if magic != MAGIC or version != FORMAT_VERSION or got_kind != int(kind):
            return None
        body = memoryview(value)[_HEADER.size :]
        if zlib.crc32(body) != crc:
            return None
        arrays, pos = {}, 0
        for _ in range(count):
            (n,) = struct.unpack_from("<B", body, pos)
            name = bytes(body[pos + 1 : pos + 1 + n]).decode("ascii")
            pos += 1 + n
            code, ndim = struct.unpack_from("<BB", body, pos)
            pos += 2
            shape = struct.unpack_from(f"<{ndim}I", body, pos)
            pos += 4 * ndim
            dtype = ARRAY_DTYPES[code]
            size = math.prod(shape) * dtype.itemsize
            arrays[name] = np.frombuffer(body[pos : pos + size], dtype=dtype).reshape(shape).copy()
            pos += size
        if pos != len(body):
            return None
        return arrays
    except (struct.error, KeyError, ValueError, UnicodeDecodeError):
        return None

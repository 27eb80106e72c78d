import numpy as np

from cache import codec
from compressors.base import Kind
from cache.keys import PREFIX, segment_key


def arrays():
    return {
        "spans": np.array([[0, 3], [4, 9]], dtype=np.int32),
        "scores": np.array([0.25, 0.75], dtype=np.float32),
        "tokens": np.array([1, 2], dtype=np.int32),
    }


def test_roundtrip_is_exact():
    value = codec.encode(Kind.WORD_SCORES, arrays())
    out = codec.decode(Kind.WORD_SCORES, value)
    assert out.keys() == arrays().keys()
    for k, v in arrays().items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v)


def test_empty_arrays_roundtrip():
    value = codec.encode(Kind.WORD_SCORES, {"spans": np.zeros((0, 2), np.int32)})
    assert codec.decode(Kind.WORD_SCORES, value)["spans"].shape == (0, 2)


def test_any_flipped_byte_is_rejected():
    value = bytearray(codec.encode(Kind.WORD_SCORES, arrays()))
    for i in range(len(value)):
        bad = bytearray(value)
        bad[i] ^= 0x01
        assert codec.decode(Kind.WORD_SCORES, bytes(bad)) is None, i


def test_truncated_wrong_kind_and_garbage_are_rejected():
    value = codec.encode(Kind.WORD_SCORES, arrays())
    assert codec.decode(Kind.WORD_SCORES, value[:-1]) is None
    assert codec.decode(Kind.WORD_SCORES, value + b"x") is None
    assert codec.decode(Kind.SOFT_TOKENS, value) is None
    assert codec.decode(Kind.WORD_SCORES, b"") is None
    assert codec.decode(Kind.WORD_SCORES, b"not a segpress value at all") is None


def test_keys_are_readable_and_separate_every_part():
    base = ("tenant-a", "llmlingua2", "f" * 64, "some text")
    key = segment_key(*base)
    assert key.startswith(f"{PREFIX}:tenant-a:llmlingua2:")
    assert key == segment_key(*base)
    others = [
        ("tenant-b", "llmlingua2", "f" * 64, "some text"),
        ("tenant-a", "complm", "f" * 64, "some text"),
        ("tenant-a", "llmlingua2", "e" * 64, "some text"),
        ("tenant-a", "llmlingua2", "f" * 64, "some text "),
    ]
    assert len({key} | {segment_key(*o) for o in others}) == 5
    # Length-prefixed parts: moving a boundary changes the key.
    assert segment_key("ab", "c", "d", "e").split(":")[-1] != segment_key("a", "bc", "d", "e").split(":")[-1]

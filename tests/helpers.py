"""Assertions shared by several test modules."""


def assert_faithful(original: str, compressed: str):
    """Every non-space run of the output is an exact substring of the input,
    and the output's characters are an ordered subsequence of the input's."""
    for piece in compressed.split():
        assert piece in original, piece
    pos = 0
    for ch in compressed:
        pos = original.find(ch, pos)
        assert pos >= 0, f"{ch!r} out of order"
        pos += 1

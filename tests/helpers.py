"""Assertions shared by several test modules."""


def assert_faithful(original: str, compressed: str):
    """Every non-space run of the output is an exact substring of the input,
    and the runs appear in the input in the same order, without overlapping."""
    pos = 0
    for piece in compressed.split():
        assert piece in original, piece
        found = original.find(piece, pos)
        assert found >= 0, f"{piece!r} out of order"
        pos = found + len(piece)

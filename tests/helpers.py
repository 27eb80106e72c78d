"""Assertions and commands shared by several test modules."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def segpress(*args: str, **kw) -> subprocess.CompletedProcess:
    """`segpress ARGS...` in a subprocess from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, **kw)


def assert_faithful(original: str, compressed: str):
    """Every non-space run of the output is an exact substring of the input,
    and the runs appear in the input in the same order, without overlapping."""
    pos = 0
    for piece in compressed.split():
        assert piece in original, piece
        found = original.find(piece, pos)
        assert found >= 0, f"{piece!r} out of order"
        pos = found + len(piece)



def assert_subsequence(original: str, compressed: str):
    """The output is pieces of the input in order, none used twice, and the
    whitespace between two pieces is whitespace the input has between them
    (or one space where the input had none, see llmlingua2._join). Stricter
    than assert_faithful: whitespace repeated or made up fails."""
    pos, space = 0, None
    for m in re.finditer(r"\s+|\S+", compressed):
        piece = m.group()
        if piece.isspace():
            space = piece
            continue
        found = original.find(piece, pos)
        assert found >= 0, f"{piece!r} is not in the input after position {pos}"
        _check_gap(original[pos:found], space)
        pos, space = found + len(piece), None
    _check_gap(original[pos:], space)


def _check_gap(gap: str, space: str | None) -> None:
    if space is None or (space == " " and not any(c.isspace() for c in gap)):
        return
    rest = iter(gap)  # the output's whitespace: the gap's, in order, none twice
    assert all(c in rest for c in space), f"{space!r} between pieces where the input has {gap!r}"

"""Assertions and commands shared by several test modules."""

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

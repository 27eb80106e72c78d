"""Giving memory back to the operating system (issue 22, item 6).

A large request (megabytes of text, hundreds of thousands of tokens) makes
many short-lived objects in several threads. glibc's malloc keeps what they
freed in per-thread arenas (up to 8 per core) and returns little of it to the
OS, so a server's RSS climbs after large requests and stays there. Two
levers, both glibc-only (elsewhere they do nothing):

- limit_arenas(n): at most n malloc arenas (mallopt M_ARENA_MAX), called at
  server start before the worker threads make theirs (--malloc-arena-max);
- trim(): malloc_trim(0), which hands the free pages of every arena back;
  the pipeline calls it after each request of at least TRIM_AFTER_CHARS
  characters (--malloc-trim), in a pool thread, at most one at a time.

`python -m service.benchmarks.limits --memory 100` measures both.
"""

import ctypes
import threading

M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h
TRIM_AFTER_CHARS = 1 << 20  # requests at least this large are followed by a trim

_lock = threading.Lock()


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018 - glibc has both
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def limit_arenas(n: int) -> bool:
    """At most `n` malloc arenas from now on (0: glibc's default); whether it took."""
    return bool(n > 0 and _LIBC is not None and _LIBC.mallopt(M_ARENA_MAX, n) == 1)


def trim() -> None:
    """Returns the free memory of every arena to the OS; skipped while
    another thread is already trimming."""
    if _LIBC is not None and _lock.acquire(blocking=False):
        try:
            _LIBC.malloc_trim(0)
        finally:
            _lock.release()

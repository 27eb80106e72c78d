"""The work of `segpress batch` (see service.batch): plan, check the
manifest, compress the parts to do, in this process, against a server or on
Ray (service.batch_ray), and count.
"""

import asyncio
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field

import grpc
from tqdm import tqdm

from segpress import SegpressClient, SegpressError
from segpress.tensors import context_tensor
from segpress.v1 import segpress_pb2 as pb

from . import batch_io, client_args
from .batch_io import BatchError, OutputDir, Part
from .errors import RequestError

log = logging.getLogger("segpress.batch")

# Status codes that describe a bad record; any other code stops the job.
ROW_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT.value[0],
              grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}
_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}
_PROBE_TEXT = "A short text that checks the compression arguments before the job starts."


# -- the job -----------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """What to compress and how: everything a worker needs, picklable."""

    input: str
    format: str
    id_field: str
    text_field: str
    part_rows: int
    output: str | None  # None with --cache-only
    params: dict  # SegpressClient.request keywords
    concurrency: int

    @classmethod
    def from_args(cls, args) -> "Job":
        if args.cache_only == bool(args.output):
            raise BatchError("give OUTPUT, or --cache-only without OUTPUT")
        if args.ray and args.server:
            raise BatchError("--ray runs the models on Ray workers; it cannot be used "
                             "with --server")
        if args.part_rows < 1 or args.concurrency < 1:
            raise BatchError("--part-rows and --concurrency must be at least 1")
        params = client_args.request_options(args)
        return cls(args.input, args.format, args.id_field, args.text_field, args.part_rows,
                   args.output, params, args.concurrency)

    def source(self):
        return batch_io.open_input(self.input, self.format, self.id_field, self.text_field)

    def request(self, text: str, **overrides) -> pb.CompressRequest:
        return SegpressClient.request(text, **{**self.params, **overrides})

    def manifest(self, source, compressor: str, fingerprint: str) -> dict:
        """What the output's parts depend on (not where or how fast they ran)."""
        params = {k: v for k, v in self.params.items() if k != "cache"}
        return {"input": batch_io.signature(source), "id_field": self.id_field,
                "text_field": self.text_field, "part_rows": self.part_rows,
                **params, "compressor": compressor, "model_fingerprint": fingerprint}


def run(args, config) -> dict:
    """Runs the job; returns the summary."""
    t_start = time.perf_counter()
    job = Job.from_args(args)
    source = job.source()
    out = OutputDir(job.output) if job.output else None
    runner = None
    try:
        plan = batch_io.plan(source, job.part_rows)
        if plan.duplicates:
            log.warning("%d records repeat an earlier id and are skipped (first kept), e.g. %s",
                        plan.duplicates, ", ".join(map(repr, plan.duplicate_ids)))
        runner = _runner(args, config, job, source)
        compressor, fingerprint = runner.probe()
        done: set[int] = set()
        if out is not None:
            _check_manifest(out, job.manifest(source, compressor, fingerprint))
            done = out.done()
        todo = [p for p in plan.parts if p.index not in done]
        progress = Progress(sum(p.records for p in todo))
        try:
            runner.run(todo, progress)
        finally:
            progress.close()
        s = progress.stats
        seconds = progress.elapsed()
        return {
            "input": job.input, "output": job.output, "mode": runner.mode,
            "compressor": compressor, "model_fingerprint": fingerprint,
            "parts": len(plan.parts), "parts_done_before": len(plan.parts) - len(todo),
            "rows": s.rows, "ok": s.rows - s.n_failed, "failed": s.n_failed,
            "failures": s.failed, "duplicates_skipped": plan.duplicates,
            "original_tokens": s.original_tokens, "compressed_tokens": s.compressed_tokens,
            "cache_hits": s.cache_hits, "cache_misses": s.cache_misses,
            "cache_hit_ratio": round(s.hit_ratio, 4),
            "seconds": round(seconds, 3),
            "rows_per_s": round(s.rows / seconds, 2) if seconds else 0.0,
            "tokens_per_s": round(s.original_tokens / seconds, 1) if seconds else 0.0,
            "total_seconds": round(time.perf_counter() - t_start, 3),
            "output_rows": out.rows() if out is not None else 0,
        }
    finally:
        if runner is not None:
            runner.close()
        if out is not None:
            out.close()


def _runner(args, config, job, source):
    if args.ray:
        from .batch_ray import RayRunner

        return RayRunner(config, job, args.ray_address, args.ray_actors, args.ray_cpus_per_actor)
    if args.server:
        backend = ServerBackend(args.server, client_args.connect(args))
        return InProcessRunner(backend, job, "server", source)
    return InProcessRunner(LocalBackend(config, job.concurrency), job, "local", source)


def _check_manifest(out: OutputDir, want: dict) -> None:
    """Writes the manifest on the first run; refuses to resume with another one."""
    want = json.loads(json.dumps(want))  # as it reads back from the file
    have = out.read_manifest()
    if have is None:
        out.write_manifest(want)
        return
    diffs = []
    for key in sorted(want.keys() | have.keys()):
        if have.get(key) != want.get(key):
            diffs.append("the input files changed (name, size or modification time)"
                         if key == "input" else f"{key}: {have.get(key)!r} -> {want.get(key)!r}")
    if diffs:
        raise BatchError(f"{out.path} was started with other arguments: {'; '.join(diffs)}. "
                         "Run with the original arguments to resume, or write to a new OUTPUT.")


def probe(backend, job: Job) -> tuple[str, str]:
    """Checks the arguments with one small request (cache bypassed); returns
    the compressor that ran and its model fingerprint."""
    req = job.request(_PROBE_TEXT, cache="bypass")
    code, message, resp = next(backend.compress_many([req]))
    if code:
        raise BatchError(f"the compression arguments were refused: {_CODE_NAMES[code]}: {message}")
    return resp.compressor, resp.model.fingerprint


def process_part(backend, source, job: Job, part: Part, on_row) -> None:
    """Compresses the records of one part, in order, and writes the part file
    (not with --cache-only). `on_row(row)` is called as each row is done."""
    records = source.read(part)
    requests = [job.request(r.text, request_id=f"row {r.row}") for r in records if not r.error]
    results = backend.compress_many(requests)
    rows = []
    for rec in records:
        if rec.error:
            row = output_row(rec, grpc.StatusCode.INVALID_ARGUMENT.value[0], rec.error)
        else:
            code, message, resp = next(results)
            if code and code not in ROW_ERRORS:
                raise BatchError(f"row {rec.row} (id {rec.id!r}) failed: "
                                 f"{_CODE_NAMES.get(code, code)}: {message}. Stopped; run "
                                 "the same command again to resume.")
            row = output_row(rec, code, message, resp)
        rows.append(row)
        on_row(row)
    if job.output is not None:
        batch_io.write_part(job.output, part.index, rows)


def output_row(rec: batch_io.Record, code: int, message: str = "",
               resp: pb.CompressResponse | None = None) -> dict:
    """One row of batch_io.SCHEMA."""
    row = {"id": rec.id, "row": rec.row, "code": code, "message": message}
    if resp is not None:
        ctx, s = resp.contexts[0], resp.stats
        row.update(original_tokens=ctx.original_tokens, compressed_tokens=ctx.compressed_tokens,
                   segments=s.segments, cache_hits=s.cache_hits, cache_misses=s.cache_misses)
        if resp.HasField("tensor"):  # one document per request: context 0's rows
            t = context_tensor(resp, 0)
            row.update(tensor=t.data, tensor_shape=list(t.shape),
                       tensor_dtype=pb.DType.Name(t.dtype).removeprefix("DTYPE_").lower())
        else:
            row["text"] = ctx.text
    return row


# -- where requests go -------------------------------------------------------


class LocalBackend:
    """The pipeline with in-process models and the store from make_store
    (--redis-url, or the embedded Redis), on an event loop of its own."""

    def __init__(self, config, concurrency: int):
        from .server import open_pipeline

        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()
        self.pipeline, self._close = self.loop.run_until_complete(open_pipeline(config))

    def compress_many(self, requests):
        """Yields (code, message, response or None) per request, in order,
        with up to `concurrency` requests in flight."""
        limit = asyncio.Semaphore(self.concurrency)

        async def one(req):
            async with limit:
                try:
                    return 0, "", await self.pipeline.compress(req)
                except RequestError as e:
                    return e.code.value[0], e.message, None

        tasks = [self.loop.create_task(one(r)) for r in requests]
        try:
            for task in tasks:
                yield self.loop.run_until_complete(task)
        finally:
            for task in tasks:
                task.cancel()

    def close(self) -> None:
        self.loop.run_until_complete(self._close())
        self.loop.close()


class ServerBackend:
    """A segpress server, one CompressStream per call."""

    def __init__(self, target: str, client: SegpressClient):
        self.target, self.client = target, client

    def compress_many(self, requests):
        try:
            for item in self.client.compress_stream(requests):
                code = item.status.code
                yield code, item.status.message, item.response if code == 0 else None
        except SegpressError as e:
            raise BatchError(f"server {self.target}: {e}") from None

    def close(self) -> None:
        self.client.close()


class InProcessRunner:
    """Does the parts one after another in this process."""

    def __init__(self, backend, job: Job, mode: str, source):
        self.backend, self.job, self.mode, self.source = backend, job, mode, source

    def probe(self) -> tuple[str, str]:
        return probe(self.backend, self.job)

    def run(self, parts: list[Part], progress: "Progress") -> None:
        for part in parts:
            process_part(self.backend, self.source, self.job, part, progress.add_row)

    def close(self) -> None:
        self.backend.close()


# -- numbers -----------------------------------------------------------------


@dataclass
class Stats:
    rows: int = 0
    failed: dict = field(default_factory=dict)  # status name -> rows
    original_tokens: int = 0
    compressed_tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    @property
    def hit_ratio(self) -> float:
        segments = self.cache_hits + self.cache_misses
        return self.cache_hits / segments if segments else 0.0

    def add_row(self, row: dict) -> None:
        self.add(Stats(1, {_CODE_NAMES[row["code"]]: 1} if row["code"] else {},
                       row.get("original_tokens", 0), row.get("compressed_tokens", 0),
                       row.get("cache_hits", 0), row.get("cache_misses", 0)))

    def add(self, other: "Stats") -> None:
        for f in dataclasses.fields(self):
            if f.name != "failed":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        for name, n in other.failed.items():
            self.failed[name] = self.failed.get(name, 0) + n


class Progress:
    """The progress bar (stderr) and this run's numbers."""

    def __init__(self, total_rows: int):
        self.stats = Stats()
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total_rows, unit="row", mininterval=0.5, dynamic_ncols=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add_row(self, row: dict) -> None:
        self.stats.add_row(row)
        self._show(1)

    def add(self, stats: Stats) -> None:
        self.stats.add(stats)
        self._show(stats.rows)

    def _show(self, rows: int) -> None:
        s = self.stats
        self.bar.set_postfix_str(
            f"{s.original_tokens / max(self.elapsed(), 1e-9):.0f} tok/s, "
            f"hits {s.hit_ratio:.0%}, failed {s.n_failed}", refresh=False)
        self.bar.update(rows)

    def close(self) -> None:
        self.bar.close()

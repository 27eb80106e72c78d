"""One part of a `segpress batch` job (see service.batch): the job's
settings, where its requests go (in-process pipeline or a server), how a part
is compressed and written, and the numbers it adds up. Shared by the local
runner (service.batch.job) and the Ray one (service.batch.ray_runner).
"""

import asyncio
import dataclasses
from dataclasses import dataclass, field

import grpc

from segpress import SegpressClient, SegpressError
from segpress.tensors import context_tensor
from segpress.v1 import segpress_pb2 as pb

from .. import client_args
from ..errors import RequestError
from . import files
from .files import BatchError, Part

# Status codes that describe a bad record; any other code stops the job.
ROW_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT.value[0],
              grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}
CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}
_PROBE_TEXT = "A short text that checks the compression arguments before the job starts."


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
        return files.open_input(self.input, self.format, self.id_field, self.text_field)

    def request(self, text: str, **overrides) -> pb.CompressRequest:
        return SegpressClient.request(text, **{**self.params, **overrides})

    def manifest(self, source, compressor: str, fingerprint: str) -> dict:
        """What the output's parts depend on (not where or how fast they ran)."""
        params = {k: v for k, v in self.params.items() if k != "cache"}
        return {"input": files.signature(source), "id_field": self.id_field,
                "text_field": self.text_field, "part_rows": self.part_rows,
                **params, "compressor": compressor, "model_fingerprint": fingerprint}


def probe(backend, job: Job) -> tuple[str, str]:
    """Checks the arguments with one small request (cache bypassed); returns
    the compressor that ran and its model fingerprint."""
    req = job.request(_PROBE_TEXT, cache="bypass")
    code, message, resp = next(backend.compress_many([req]))
    if code:
        raise BatchError(f"the compression arguments were refused: {CODE_NAMES[code]}: {message}")
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
                                 f"{CODE_NAMES.get(code, code)}: {message}. Stopped; run "
                                 "the same command again to resume.")
            row = output_row(rec, code, message, resp)
        rows.append(row)
        on_row(row)
    if job.output is not None:
        files.write_part(job.output, part.index, rows)


def output_row(rec: files.Record, code: int, message: str = "",
               resp: pb.CompressResponse | None = None) -> dict:
    """One row of files.SCHEMA."""
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
        from ..assemble import open_pipeline

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
    """A segpress server, one CompressStream per call. A request larger than
    the server's message limit is not sent (the server would end the whole
    stream): it is a RESOURCE_EXHAUSTED row of its own."""

    def __init__(self, target: str, client: SegpressClient):
        self.target, self.client = target, client
        self._max_message_bytes = None

    def max_message_bytes(self) -> int:
        """The server's limit on a message (Info), asked once."""
        if self._max_message_bytes is None:
            try:
                self._max_message_bytes = self.client.info().limits.max_message_bytes or 0
            except SegpressError as e:
                raise BatchError(f"server {self.target}: {e}") from None
        return self._max_message_bytes

    def compress_many(self, requests):
        requests = list(requests)
        limit = self.max_message_bytes()
        sizes = [r.ByteSize() for r in requests]
        sendable = [r for r, n in zip(requests, sizes) if not limit or n <= limit]
        try:
            results = iter(self.client.compress_stream(sendable))
            for n in sizes:
                if limit and n > limit:
                    yield (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                           f"the request is {n} bytes; the server's limit is "
                           f"max_message_bytes={limit}", None)
                    continue
                item = next(results)
                code = item.status.code
                yield code, item.status.message, item.response if code == 0 else None
        except SegpressError as e:
            raise BatchError(f"server {self.target}: {e}") from None

    def close(self) -> None:
        self.client.close()


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
        self.add(Stats(1, {CODE_NAMES[row["code"]]: 1} if row["code"] else {},
                       row.get("original_tokens", 0), row.get("compressed_tokens", 0),
                       row.get("cache_hits", 0), row.get("cache_misses", 0)))

    def add(self, other: "Stats") -> None:
        for f in dataclasses.fields(self):
            if f.name != "failed":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        for name, n in other.failed.items():
            self.failed[name] = self.failed.get(name, 0) + n

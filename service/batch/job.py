"""The work of `segpress batch` (see service.batch): plan, check the
manifest, compress the parts to do, in this process, against a server or on
Ray (service.batch.ray_runner), and count.
"""

import json
import logging
import time

from tqdm import tqdm

from .. import client_args
from . import files
from .files import BatchError, OutputDir, Part
from .parts import Job, LocalBackend, ServerBackend, Stats, probe, process_part

log = logging.getLogger("segpress.batch")


def run(args, config) -> dict:
    """Runs the job; returns the summary."""
    t_start = time.perf_counter()
    job = Job.from_args(args)
    source = job.source()
    out = OutputDir(job.output) if job.output else None
    runner = None
    try:
        plan = files.plan(source, job.part_rows)
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
        from .ray_runner import RayRunner

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

"""`segpress batch --ray`: the same job on Ray Data.

The driver (this process) plans the parts, checks the manifest and shows the
progress, as a local run does. The parts still to do become a Ray dataset of
part numbers; `map_batches` hands them out, one at a time, to a pool of
PartWorker actors. Each actor loads the models once (the in-process pipeline
of service.batch.parts), and for each part reads the part's records from INPUT,
compresses them (warming the shared Redis) and writes the part file
atomically. Only each part's numbers come back to the driver. Parts are the
same files as in a local run, so a job started locally can be resumed on Ray
and the other way round.

Reading and writing happen in the actors rather than with Ray's read_json /
write_parquet: the input is read by the same code as locally (a bad line is a
failure row, not a failed read; rows keep their numbers; duplicates and
finished parts are skipped), and only whole parts ever appear in OUTPUT.

On a cluster (--ray-address or RAY_ADDRESS): INPUT, OUTPUT and the model
(--llmlingua2-model) must be at the same paths on every node (shared
filesystem), segpress installed in the workers' Python, and --redis-url a
Redis every worker reaches.
"""

import dataclasses
import json
import os

import ray

from cache.embedded import start_embedded

from .files import BatchError
from .parts import LocalBackend, Stats, probe, process_part


class PartWorker:
    """A Ray Data actor: loads the models once, then does whole parts."""

    def __init__(self, config, job, parts):
        self.backend = LocalBackend(config, job.concurrency)
        self.source = job.source()
        self.job = job
        self.parts = {p.index: p for p in parts}

    def __call__(self, batch: dict) -> dict:
        stats = []
        for i in batch["part"]:
            stats.append(Stats())
            process_part(self.backend, self.source, self.job, self.parts[int(i)], stats[-1].add_row)
        return {"stats": [json.dumps(dataclasses.asdict(s)) for s in stats]}


def _probe(config, job):
    backend = LocalBackend(config, 1)
    try:
        return probe(backend, job)
    finally:
        backend.close()


class RayRunner:
    mode = "ray"

    def __init__(self, config, job, address: str | None, actors: int | None, cpus_per_actor: int):
        address = address or os.environ.get("RAY_ADDRESS")
        self.embedded = None
        if not config.redis_url:
            if address:
                raise BatchError("--ray on a cluster needs --redis-url, a Redis that every "
                                 "worker reaches")
            # One embedded Redis on this machine, shared by the local actors.
            self.embedded, url = start_embedded(config.cache_dir)
            config = dataclasses.replace(config, redis_url=url)
        if not config.torch_threads:
            config = dataclasses.replace(config, torch_threads=cpus_per_actor)
        self.config, self.job, self.cpus = config, job, cpus_per_actor
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=actors * cpus_per_actor if actors else None,
                     include_dashboard=False)
        self.actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_actor)
        ray.data.DataContext.get_current().enable_progress_bars = False

    def probe(self) -> tuple[str, str]:
        # On a worker: the driver need not load (or even reach) the model.
        task = ray.remote(_probe).options(num_cpus=self.cpus)
        return ray.get(task.remote(self.config, self.job))

    def run(self, parts, progress) -> None:
        if not parts:
            return
        ds = ray.data.from_items([{"part": p.index} for p in parts])
        ds = ds.map_batches(
            PartWorker, batch_size=1, num_cpus=self.cpus,
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            fn_constructor_kwargs={"config": self.config, "job": self.job, "parts": parts},
        )
        for row in ds.iter_rows():
            progress.add(Stats(**json.loads(row["stats"])))

    def close(self) -> None:
        ray.shutdown()
        if self.embedded is not None:
            self.embedded.shutdown()

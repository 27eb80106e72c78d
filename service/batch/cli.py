"""`segpress batch INPUT OUTPUT`: compress a whole document store ahead of time.

Every record of INPUT (JSONL or Parquet with an id and a text field; see
service.batch.files) is compressed as a request of its own, with the flags of
`segpress compress`, and written to OUTPUT, a directory of Parquet part files.
Compressing warms the segment cache, so a later request for the same text
(same namespace, compressor and model) is all hits; --cache-only warms it and
writes nothing.

Where the work runs:
- in this process (default): the models load here; the cache is --redis-url,
  or the embedded Redis under --cache-dir; --concurrency requests in flight;
- --server HOST:PORT: a segpress server, one CompressStream per part (the
  server runs its stream_window requests at once); --token, --tls, --ca,
  --client-cert and --client-key as for `segpress compress`;
- --ray: Ray Data, an actor pool of in-process pipelines (service.batch.ray_runner).

Resume: OUTPUT keeps whole parts only. Run the same command again after a
crash or kill and it writes just the missing parts. The first run records its
arguments, the input files' sizes and times and the model fingerprint in
OUTPUT/_manifest.json; a run whose arguments, input or model differ is refused
with the differences named.

Failures are data: a record that cannot be compressed (no id, no text, not a
string, not UTF-8, empty, over a limit) becomes an output row with its status
code and message, and the job goes on. Anything else (server unreachable, an
internal error) stops the job before the part is written; run it again.

This module is the command line (flags, summary); the job is in
service.batch.job, one part's work in service.batch.parts, the files in
service.batch.files, Ray in service.batch.ray_runner.
It imports nothing heavy, as every `segpress` command loads it.
"""

import json
import sys

from .. import client_args
from .. import config as cfg


def add_arguments(p) -> None:
    """The `segpress batch` flags."""
    p.add_argument("input", help="JSONL file, or Parquet file or directory of *.parquet")
    p.add_argument("output", nargs="?",
                   help="output directory (a Parquet dataset); omit with --cache-only")
    p.add_argument("--format", choices=["auto", "jsonl", "parquet"], default="auto",
                   help="input format (auto: Parquet for *.parquet or a directory, else JSONL)")
    p.add_argument("--id-field", default="id", help="field or column holding the id")
    p.add_argument("--text-field", default="text", help="field or column holding the text")
    p.add_argument("--part-rows", type=int, default=1000, help="records per output part file")
    # The request flags of `segpress compress`, applied to every record.
    client_args.add_request_arguments(p)
    p.add_argument("--cache-only", action="store_true",
                   help="only warm the cache: compress every record, write no output")
    # Where the work runs.
    p.add_argument("--server", help="HOST:PORT of a segpress server; default: run locally")
    client_args.add_connection_arguments(p)
    p.add_argument("--concurrency", type=int, default=32,
                   help="requests in flight, in this process or on each Ray actor")
    p.add_argument("--ray", action="store_true", help="run on Ray Data (see service.batch.ray_runner)")
    p.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, "
                                         "else a local Ray instance)")
    p.add_argument("--ray-actors", type=int, help="model actors (default: cluster CPUs / "
                                                  "--ray-cpus-per-actor)")
    p.add_argument("--ray-cpus-per-actor", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    cfg.add_arguments(p, ["redis_url", "cache_dir", "cache_ttl_s", "cache_timeout_s",
                          "llmlingua2_model", "device", "model_dtype", "batch_size",
                          "max_batch_segments", "torch_threads", "max_request_bytes",
                          "max_request_tokens"])


def main(args, config) -> int:
    from .files import BatchError
    from .job import run

    try:
        summary = run(args, config)
    except BatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    return 0


def format_summary(s: dict) -> str:
    failures = ", ".join(f"{name} {n}" for name, n in sorted(s["failures"].items()))
    lines = [
        f"{s['rows']} records in {s['seconds']:.1f}s ({s['mode']}): {s['rows_per_s']:.1f} "
        f"records/s, {s['tokens_per_s']:.0f} tokens/s; {s['parts'] - s['parts_done_before']} "
        f"of {s['parts']} parts done now, {s['parts_done_before']} before",
        f"ok {s['ok']}, failed {s['failed']}" + (f" ({failures})" if failures else "")
        + f"; duplicate ids skipped {s['duplicates_skipped']}",
        f"tokens {s['original_tokens']} -> {s['compressed_tokens']}; cache hits "
        f"{s['cache_hits']} of {s['cache_hits'] + s['cache_misses']} segments "
        f"({s['cache_hit_ratio']:.0%})",
    ]
    if s["output"]:
        lines.append(f"output: {s['output']} ({s['output_rows']} rows)")
    return "\n".join(lines)

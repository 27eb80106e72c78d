"""The `segpress` command.

    segpress serve [--port 50051] [--redis-url URL] ...
    segpress compress FILE|- [--server HOST:PORT] [--rate R | --target-tokens N] [--json]
    segpress info [--server HOST:PORT]
    segpress models pull|list [--json]
    segpress train llmlingua2 [--epochs N] ...
    segpress train complm [--steps N] ...
    segpress train arc [--steps N] ...
    segpress eval [--split dev|test] [--examples N] [--rates 0.33,0.5] ...
    segpress eval complm|arc [--split dev|test] [--weights PATH] [--qa-only] [--needles N] ...

Every `serve` flag also reads an environment variable (see service.config).
`compress` without --server runs the compressor in this process.
Building the parser imports nothing heavy (every command, --help too, pays for
it); each command imports what it needs when it runs.
"""

import argparse
import dataclasses
import json
import os
import sys

from . import config as cfg
from . import client_args
from .logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    ap = argparse.ArgumentParser(prog="segpress", description="segment-wise context compression")
    sub = ap.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    cfg.add_arguments(serve)

    compress_cmd = sub.add_parser("compress", help="compress a file or stdin")
    compress_cmd.add_argument("input", nargs="?", default="-",
                      help="text file, - for stdin, or 'sample' for the bundled sample")
    compress_cmd.add_argument("--server", help="HOST:PORT of a segpress server; default: run locally")
    client_args.add_request_arguments(compress_cmd)
    compress_cmd.add_argument("--json", action="store_true", help="print the whole response as JSON")
    client_args.add_connection_arguments(compress_cmd)
    cfg.add_arguments(compress_cmd, ["redis_url", "llmlingua2_model", "cache_dir", "device", "engine"])

    info = sub.add_parser("info", help="describe a server (or the local setup)")
    info.add_argument("--server", help="HOST:PORT of a segpress server; default: local")
    client_args.add_connection_arguments(info)
    cfg.add_arguments(info, ["llmlingua2_model", "cache_dir", "device"])

    bench = sub.add_parser("bench", help="speed: cold, warm, per-token cost, concurrency")
    bench.add_argument("--docs", type=int, default=16, help="documents (about 620 tokens each)")
    bench.add_argument("--rate", type=float, default=0.33)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--no-reference", action="store_true", help="skip the llmlingua package")
    bench.add_argument("--quick", action="store_true", help="smaller sizes (no 100k-token run)")
    bench.add_argument("--engines", help="section 1's rows, comma list (default: torch float32,"
                                         "torch bfloat16,onnx float32,onnx int8)")
    bench.add_argument("--only", help="comma list of sections to run: cold, warm, cost, "
                                      "concurrency, query, http (default: all)")
    bench.add_argument("--json", action="store_true")
    cfg.add_arguments(bench, ["llmlingua2_model", "cache_dir", "device", "batch_size",
                              "model_dtype", "engine", "redis_url"])

    models = sub.add_parser("models", help="manage model files")
    models.add_argument("action", choices=["pull", "list"],
                        help="pull: build the default models under --cache-dir/models (does nothing "
                             "when they are there and intact); list: show them with fingerprints")
    models.add_argument("--json", action="store_true")
    cfg.add_arguments(models, ["cache_dir"])

    from compressors.registry import REGISTRY

    train = sub.add_parser("train", help="train a model (writes compressors/weights/)")
    train.add_argument("model", choices=[n for n, e in REGISTRY.items() if e.training])
    train.add_argument("options", nargs=argparse.REMAINDER,
                       help="the trainer's flags (segpress train MODEL --help lists them)")

    ev = sub.add_parser("eval", help="compression quality: reader accuracy against compression ratio")
    from .evaluation.cli import add_arguments as add_eval_arguments, add_complm_arguments
    add_eval_arguments(ev)
    cfg.add_arguments(ev, ["cache_dir", "llmlingua2_model", "torch_threads"])
    targets = ev.add_subparsers(dest="eval_target")
    for name in (n for n, e in REGISTRY.items() if e.output == "tensor"):
        add_complm_arguments(targets.add_parser(
            name, help=f"{name}: continuation loss with its soft tokens vs controls, "
                       "needle QA, prefill time, reconstruction (weights with a <Rec> row)"))

    from .batch import cli as batch
    batch.add_arguments(sub.add_parser("batch", help="compress a JSONL or Parquet document store"))

    args = ap.parse_args(argv)
    if args.command == "train":
        args = _trainer_parser(args.model).parse_args(args.options, namespace=args)
    try:
        config = cfg.from_args(args)
    except cfg.ConfigError as e:
        ap.error(str(e))  # a usage error: exit status 2
    setup_logging(config.log_level, config.log_format)
    commands = {"serve": _serve, "compress": _compress, "info": _info, "models": _models,
                "bench": _bench, "batch": batch.main}
    commands.update(train=_train, eval=_eval)
    return commands[args.command](args, config)


def _serve(args, config) -> int:
    import asyncio

    from .server import serve

    asyncio.run(serve(config))
    return 0


def _compress(args, config) -> int:
    import asyncio

    from google.protobuf import json_format
    from segpress import SegpressClient, SegpressError

    if args.input == "-":
        text = sys.stdin.read()
    else:
        path = cfg.SAMPLE if args.input == "sample" else args.input
        text = open(path, encoding="utf-8").read()
    options = client_args.request_options(args)
    if args.server:
        with client_args.connect(args) as client:
            try:
                resp = client.compress([text], **options)
            except SegpressError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
    else:
        from .pipeline import RequestError

        req = SegpressClient.request([text], **options)
        # The sentence embedder loads only for a query.
        config = dataclasses.replace(config, selection=args.query is not None)
        try:
            resp = asyncio.run(_local(config, lambda p: p.compress(req)))
        except RequestError as e:
            print(f"error: {e.code.name}: {e.message}", file=sys.stderr)
            return 2
    if args.json:
        print(json_format.MessageToJson(resp, preserving_proto_field_name=True))
    else:
        print(resp.text)
        s = resp.stats
        print(f"# {s.original_tokens} -> {s.compressed_tokens} tokens ({s.ratio:.2f}x), "
              f"cache hits {s.cache_hits}/{s.segments}", file=sys.stderr)
    return 0


def _info(args, config) -> int:
    import asyncio

    from google.protobuf import json_format

    if args.server:
        with client_args.connect(args) as client:
            resp = client.info()
    else:
        async def info(p):
            return p.info()
        resp = asyncio.run(_local(config, info))
    print(json_format.MessageToJson(resp, preserving_proto_field_name=True))
    return 0


def _bench(args, config) -> int:
    from .benchmarks.serving import main as bench_main

    return bench_main(args, config)


def _models(args, config) -> int:
    from compressors import artifacts, models

    try:
        if args.action == "pull":
            from compressors.llmlingua2 import LLMLingua2

            rows = models.pull(config.models_dir)
            # and the llmlingua2 engine the server runs (--engine auto: the int8
            # model), on the checkpoint pull has just built and verified
            LLMLingua2(next(r["path"] for r in rows if r["name"] == models.DEFAULT_LLMLINGUA2),
                       dtype=config.model_dtype, engine=config.engine)
        else:
            rows = models.list_models(config.models_dir)
    except artifacts.ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:<24} {r['state']:<8} {r.get('fingerprint', '-'):<64}  {r['path']}")
    return 0 if all(r["state"] == "ok" for r in rows) else 1


def _trainer(name: str):
    """The training module of compressor `name` (its registry entry names it)."""
    import importlib

    from compressors.registry import REGISTRY

    return importlib.import_module(f"compressors.training.{REGISTRY[name].training}")


def _trainer_parser(name: str) -> argparse.ArgumentParser:
    """`segpress train NAME`'s flags: one per field of the trainer's
    TrainConfig (unset flags keep its defaults), --out, and the cache and
    thread settings."""
    p = argparse.ArgumentParser(prog=f"segpress train {name}",
                                description=f"defaults: compressors/training/{_trainer(name).__name__.split('.')[-1]}.py "
                                            "TrainConfig")
    for f in dataclasses.fields(_trainer(name).TrainConfig):
        kind = type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), type=_bool if kind is bool else kind,
                       help=f"default {f.default!r}")
    p.add_argument("--out", help="weights file (default: the shipped one in compressors/weights/)")
    cfg.add_arguments(p, ["cache_dir", "torch_threads"])
    return p


def _bool(raw: str) -> bool:
    try:
        return cfg.parse_bool(raw)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{raw!r}: {e}") from None


def _train(args, config) -> int:
    import torch

    training = _trainer(args.model)
    # The flags left unset keep TrainConfig's defaults.
    fields = dataclasses.fields(training.TrainConfig)
    train_cfg = training.TrainConfig(**{f.name: getattr(args, f.name) for f in fields
                                        if getattr(args, f.name, None) is not None})
    torch.set_num_threads(config.torch_threads or torch.get_num_threads())
    return training.main(train_cfg, args.out, config)


def _eval(args, config) -> int:
    if getattr(args, "eval_target", None):
        from .evaluation.soft import main as eval_main
    else:
        from .evaluation.cli import main as eval_main

    return eval_main(args, config)


async def _local(config, run):
    """Runs `run(pipeline)` with in-process models; cache only with --redis-url."""
    from .assemble import open_pipeline

    pipeline, close = await open_pipeline(config, embedded=False)
    try:
        return await run(pipeline)
    finally:
        await close()


if __name__ == "__main__":
    sys.exit(main())

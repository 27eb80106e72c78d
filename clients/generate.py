"""Regenerates the client code from proto/ (or, with --check, verifies it).

    python clients/generate.py                # rewrite the generated files
    python clients/generate.py --check        # exit 1 if any is stale
    python clients/generate.py --lang go      # only one language

Python: grpcio-tools' bundled protoc with the grpc and mypy-protobuf
plugins. The generator versions are pinned in pyproject.toml's `dev` extra;
generated files record what made them.

Go: the same protoc with protoc-gen-go and protoc-gen-go-grpc, pinned in
GO_PLUGINS below and installed with `go install` into
~/.cache/segpress/go-bin (never into the repository). Without a `go` binary
the Go code is skipped, unless --lang go asks for it.
"""

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTOS = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
PY_OUT = ROOT / "clients" / "python"
PY_FILES = [
    f"{p[:-len('.proto')]}{suffix}"
    for p in PROTOS
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
]
GO_OUT = ROOT / "clients" / "go"
GO_MODULE = "github.com/segpress/segpress/clients/go"
GO_PACKAGES = ["segpressv1"]  # where the protos' go_package options put the code
GO_PLUGINS = {
    "protoc-gen-go": "google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12",
    "protoc-gen-go-grpc": "google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2",
}
GO_BIN = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segpress" / "go-bin"


def protoc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", *args, *PROTOS],
                   check=True)


def generate_python(out: Path) -> list[str]:
    plugin_dir = Path(sys.executable).parent
    protoc(
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
    )
    return PY_FILES


def go_plugin(name: str) -> Path:
    """The pinned plugin binary, built once per version into GO_BIN."""
    package = GO_PLUGINS[name]
    bin_dir = GO_BIN / package.rsplit("/", 1)[1]  # e.g. protoc-gen-go@v1.36.12
    binary = bin_dir / name
    if not binary.exists():
        subprocess.run(["go", "install", package], check=True,
                       env={**os.environ, "GOBIN": str(bin_dir)})
    return binary


def generate_go(out: Path) -> list[str]:
    protoc(
        *(f"--plugin={name}={go_plugin(name)}" for name in GO_PLUGINS),
        f"--go_out={out}", f"--go_opt=module={GO_MODULE}",
        f"--go-grpc_out={out}", f"--go-grpc_opt=module={GO_MODULE}",
    )
    # Every .go file in the generated packages, so a leftover one is stale too.
    return sorted({
        f.relative_to(d).as_posix()
        for d in (out, GO_OUT)
        for pkg in GO_PACKAGES
        for f in (d / pkg).glob("*.go")
    })


LANGUAGES = {  # name: (generator, output directory)
    "python": (generate_python, PY_OUT),
    "go": (generate_go, GO_OUT),
}


def sync(lang: str, check: bool) -> bool:
    """Generates `lang` into a temporary directory, then compares (check) or
    updates the repository's files. Returns False when some were stale."""
    generate, dest = LANGUAGES[lang]
    rel = dest.relative_to(ROOT).as_posix()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        stale = [f for f in generate(out) if not (out / f).exists() or not (dest / f).exists()
                 or not filecmp.cmp(out / f, dest / f, shallow=False)]
        for f in stale:
            if check:
                print(f"stale: {rel}/{f} (run: python clients/generate.py)")
            elif (out / f).exists():
                (dest / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out / f, dest / f)
            else:  # left over from an older proto
                (dest / f).unlink()
    if not check:
        print(f"{lang}: {len(stale)} files updated under {rel}/")
    return not (check and stale)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only verify; exit 1 when stale")
    ap.add_argument("--lang", action="append", choices=sorted(LANGUAGES),
                    help="generate only this language (repeatable; default: all)")
    args = ap.parse_args()
    langs = args.lang or list(LANGUAGES)
    if "go" in langs and shutil.which("go") is None:
        if args.lang:
            ap.error("--lang go needs the `go` binary on PATH")
        print("skipped go: no `go` binary on PATH", file=sys.stderr)
        langs.remove("go")
    ok = [sync(lang, args.check) for lang in langs]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Regenerates the client code from proto/ (or, with --check, verifies it).

    python clients/generate.py          # rewrite the generated files
    python clients/generate.py --check  # exit 1 if any is stale

Python: grpcio-tools' bundled protoc with the grpc and mypy-protobuf
plugins. The generator versions are pinned in pyproject.toml's `dev` extra;
generated files record what made them.
"""

import argparse
import filecmp
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


def generate_python(out: Path) -> None:
    plugin_dir = Path(sys.executable).parent
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *PROTOS,
    ]
    subprocess.run(cmd, check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only verify; exit 1 when stale")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate_python(Path(tmp))
        stale = [f for f in PY_FILES if not (PY_OUT / f).exists()
                 or not filecmp.cmp(Path(tmp) / f, PY_OUT / f, shallow=False)]
        if args.check:
            for f in stale:
                print(f"stale: clients/python/{f} (run: python clients/generate.py)")
            return 1 if stale else 0
        for f in PY_FILES:
            (PY_OUT / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(tmp) / f, PY_OUT / f)
        print(f"wrote {len(PY_FILES)} Python files under clients/python/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

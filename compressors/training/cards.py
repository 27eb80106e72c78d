"""Weight cards: the JSON written next to trained weights.

A card names no path of the machine it was made on: paths in the command
and the config become repository-relative (inside the repository) or
`<name>` (outside it), and weights a run started from are named by the
commit and file they were committed as, when they were."""

import json
import subprocess
import sys
from pathlib import Path

from ..artifacts import sha256

REPO = Path(__file__).resolve().parents[2]


def write_card(weights: Path, config: dict, **fields) -> dict:
    """Writes the JSON card next to trained weights (same name, .json): the
    file's name, sha256 and size, the command and training config that made
    it, the lineage of the weights it started from (config's init_from), and
    `fields`. Returns the card."""
    init = config.get("init_from")
    lineage = {"init_from": committed_as(Path(init)) or {"sha256": sha256(Path(init))}} if init else {}
    card = {"file": weights.name, "sha256": sha256(weights), "bytes": weights.stat().st_size,
            "command": command("segpress", sys.argv[1:]),
            "config": {k: portable(v) if isinstance(v, str) else v for k, v in config.items()},
            **lineage, **fields}
    weights.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def command(program: str, argv: list[str]) -> str:
    """The command line that ran, with portable() arguments."""
    return " ".join([program, *(portable(a) for a in argv)])


def portable(value: str) -> str:
    """`value`, with an absolute path made repository-relative, or `<its
    file name>` when it lies outside the repository."""
    if not value.startswith("/"):
        return value
    path = Path(value).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else f"<{path.name}>"


def committed_as(path: Path) -> dict | None:
    """{"commit", "file"} of the newest commit that holds `path`'s bytes as
    a file under compressors/weights/, or None (not committed, or no git)."""
    want = sha256(path)
    try:
        log = subprocess.run(["git", "-C", str(REPO), "log", "--format=%h", "--", "compressors/weights"],
                             capture_output=True, text=True, check=True).stdout.split()
        for commit in log:
            for name in subprocess.run(["git", "-C", str(REPO), "ls-tree", "--name-only", commit,
                                        "compressors/weights/"], capture_output=True, text=True,
                                       check=True).stdout.split():
                if name.endswith(".safetensors") and _blob_sha256(commit, name) == want:
                    return {"commit": commit, "file": name}
    except (OSError, subprocess.CalledProcessError):
        pass
    return None


def _blob_sha256(commit: str, name: str) -> str:
    import hashlib

    blob = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{name}"], capture_output=True,
                          check=True).stdout
    return hashlib.sha256(blob).hexdigest()

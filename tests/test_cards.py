"""Weight cards name no path of the machine that wrote them, and name the
weights a run started from by commit and file."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from compressors.training import cards

WEIGHTS = cards.REPO / "compressors" / "weights"


def test_a_card_names_no_local_path(tmp_path, monkeypatch):
    weights = tmp_path / "mine.safetensors"
    weights.write_bytes(b"weights")
    start = tmp_path / "start.safetensors"
    start.write_bytes(b"not committed")
    monkeypatch.setattr(sys, "argv", ["segpress", "train", "complm", "--cache-dir", str(tmp_path / "cache"),
                                      "--out", str(weights), "--init-from", str(start), "--steps", "3"])
    card = cards.write_card(weights, {"init_from": str(start), "steps": 3}, note="x")
    text = (tmp_path / "mine.json").read_text()
    assert str(tmp_path) not in text and json.loads(text) == card
    assert card["command"] == ("segpress train complm --cache-dir <cache> --out <mine.safetensors> "
                               "--init-from <start.safetensors> --steps 3")
    assert card["config"] == {"init_from": "<start.safetensors>", "steps": 3}
    assert card["init_from"] == {"sha256": cards.sha256(start)}  # not committed: its bytes' hash


def test_committed_weights_are_named_by_commit_and_file(tmp_path):
    if not (cards.REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    copy = tmp_path / "copy.safetensors"
    shutil.copy(WEIGHTS / "complm-smollm2-135m.safetensors", copy)
    found = cards.committed_as(copy)
    assert found["file"] == "compressors/weights/complm-smollm2-135m.safetensors"
    assert len(found["commit"]) >= 7
    assert cards.portable(str(WEIGHTS / "x.json")) == str(Path("compressors/weights/x.json"))

"""Weight cards: the JSON written next to trained weights."""

import json
import sys
from pathlib import Path

from ..artifacts import sha256


def write_card(weights: Path, config: dict, **fields) -> dict:
    """Writes the JSON card next to trained weights (same name, .json): the
    file's name, sha256 and size, the command and training config that made
    it, and `fields`. Returns the card."""
    card = {"file": weights.name, "sha256": sha256(weights), "bytes": weights.stat().st_size,
            "command": "segpress " + " ".join(sys.argv[1:]), "config": config, **fields}
    weights.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return card

"""Records complm's entries of tests/data/recorded_outputs.json and its rows
(tests/data/complm_rows.safetensors) again, after a deliberate change of its
weights: `.venv/bin/python tests/record_complm.py`. The other entries stay
as they are; say so in the commit. The rows are compared with a tolerance,
so one CPU's recording holds for all: other CPUs' complm entries are
dropped, but for the float32 entries' cache id and keys, which name the
weights and are recorded again from a float32 run."""

import copy
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from compressors.models import ensure_default_llmlingua2  # noqa: E402
from service.config import Config  # noqa: E402
from test_recorded_outputs import RECORDED, ROWS, run_pipeline  # noqa: E402


def main() -> None:
    path = ROOT / "tests" / "data" / "recorded_outputs.json"
    model_dir = str(ensure_default_llmlingua2(Config().models_dir))
    got = run_pipeline(model_dir, model_dtype="bfloat16")  # the main recording's precision
    float32 = run_pipeline(model_dir, model_dtype="float32")["keys"]["complm"]
    rows = got["complm"].pop("rows")
    del got["keys"]["complm"]["values"]  # the response's rows, recorded with them
    save_file({"rows": torch.tensor(rows).bfloat16()}, ROWS)  # the CEs are bfloat16: exact
    recorded = {**RECORDED, "complm": got["complm"], "keys": {**RECORDED["keys"], "complm": got["keys"]["complm"]}}
    others = copy.deepcopy(RECORDED.get("other_cpus", []))
    for other in others:
        other["differs"].pop("complm", None)
        other["differs"].get("keys", {}).pop("complm", None)
        if other["dtype"] == "float32":
            other["differs"]["keys"]["complm"] = {k: float32[k] for k in ("cache_id", "keys")}
        if other["differs"].get("keys") == {}:
            del other["differs"]["keys"]
    if others:
        recorded["other_cpus"] = [o for o in others if o["differs"]]
    path.write_text(json.dumps(recorded, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()

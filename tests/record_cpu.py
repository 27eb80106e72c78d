"""Records what tests/test_recorded_outputs.py sees on this machine's CPU
where it differs from the main recording (the last bits of scores and CEs,
so the odd word at a budget edge): `.venv/bin/python tests/record_cpu.py`,
in the precision the default picks here. `--dtype float32` records the
float32 entry on any CPU (the precision the default picks on a CPU without
bf16 instructions): its cache ids and keys name float32, and llmlingua2's
scores are kept to compare within a tolerance. Run it only on a checkout
whose outputs are known to be right, and say in the commit which CPU it was."""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from compressors.engines import resolve_dtype  # noqa: E402
from compressors.models import ensure_default_llmlingua2  # noqa: E402
from service.config import Config  # noqa: E402
from test_recorded_outputs import RECORDED, cpu, recordings, run_pipeline  # noqa: E402


def differences(main, got):
    """The parts of `got` that are not as in `main` (dicts compared key by key)."""
    if isinstance(main, dict) and isinstance(got, dict):
        out = {k: differences(main[k], v) for k, v in got.items() if k in main and v != main[k]}
        return {k: v for k, v in out.items() if v != {}}
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=resolve_dtype("auto"))
    dtype = parser.parse_args().dtype
    path = ROOT / "tests" / "data" / "recorded_outputs.json"
    got = run_pipeline(str(ensure_default_llmlingua2(Config().models_dir)), model_dtype=dtype)
    main_recording = recordings("bfloat16")[0]
    diff = differences(main_recording, got)
    for name in ("llmlingua2", "complm"):
        got_keys, want = got["keys"][name], main_recording["keys"][name]
        assert got_keys["segments"] == want["segments"], f"{name} segments differ: not a CPU difference"
        # A cache id (and so every key) names the model and the precision:
        # only the precision may differ from the main (bfloat16) recording.
        assert got_keys["cache_id"] == want["cache_id"].rsplit(":", 1)[0] + f":{dtype}", \
            f"{name} cache id differs by more than its precision: not a CPU difference"
    if dtype == "float32":  # its bytes move with the CPU: the scores are compared instead
        diff["keys"]["llmlingua2"].pop("value_sha256", None)
        diff["keys"]["llmlingua2"]["scores"] = got["keys"]["llmlingua2"]["scores"]
    others = [o for o in RECORDED.get("other_cpus", []) if (o["cpu"], o["dtype"]) != (cpu(), dtype)]
    if diff:
        others.append({"cpu": cpu(), "dtype": dtype, "differs": diff})
    recorded = {**RECORDED, "other_cpus": others}
    path.write_text(json.dumps(recorded, indent=1, sort_keys=True))
    print(json.dumps({"cpu": cpu(), "dtype": dtype, "differs": sorted(diff)}, indent=1))


if __name__ == "__main__":
    main()

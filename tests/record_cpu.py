"""Records what tests/test_recorded_outputs.py sees on this machine's CPU
where it differs from the main recording (the last bits of scores and CEs,
so the odd word at a budget edge): `.venv/bin/python tests/record_cpu.py`.
Run it only on a checkout whose outputs are known to be right, and say in
the commit which CPU it was."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

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
    path = ROOT / "tests" / "data" / "recorded_outputs.json"
    got = run_pipeline(str(ensure_default_llmlingua2(Config().models_dir)))
    diff = differences(recordings()[0], got)
    for part in ("cache_id", "segments", "keys"):  # must never differ by CPU
        for name in ("llmlingua2", "complm"):
            assert part not in diff.get("keys", {}).get(name, {}), f"{name} {part} differs: not a CPU difference"
    others = [o for o in RECORDED.get("other_cpus", []) if o["cpu"] != cpu()]
    if diff:
        others.append({"cpu": cpu(), "differs": diff})
    recorded = {**RECORDED, "other_cpus": others}
    path.write_text(json.dumps(recorded, indent=1, sort_keys=True))
    print(json.dumps({"cpu": cpu(), "differs": sorted(diff)}, indent=1))


if __name__ == "__main__":
    main()

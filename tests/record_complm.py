"""Records complm's entries of tests/data/recorded_outputs.json again, after a
deliberate change of its weights: `.venv/bin/python tests/record_complm.py`.
The other entries stay as they are; say so in the commit."""

import asyncio
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from google.protobuf import json_format  # noqa: E402

from cache import codec  # noqa: E402
from cache.keys import segment_key  # noqa: E402
from segpress import SegpressClient  # noqa: E402
from service.config import SAMPLE, Config  # noqa: E402
from service.server import open_pipeline  # noqa: E402


async def main() -> None:
    path = ROOT / "tests" / "data" / "recorded_outputs.json"
    recorded = json.loads(path.read_text())
    text = SAMPLE.read_text(encoding="utf-8")
    pipeline, close = await open_pipeline(Config(compressors="complm"), embedded=False)
    try:
        resp = await pipeline.compress(SegpressClient.request([text], compressor="complm"))
        comp = pipeline.compressors["complm"]
    finally:
        await close()
    out = json.loads(json_format.MessageToJson(resp, preserving_proto_field_name=True))
    for ctx in out["contexts"]:
        ctx.pop("kept")
    recorded["complm"] = {"contexts": out["contexts"], "dtype": out["tensor"]["dtype"],
                          "segment_offsets": out["tensor"]["segment_offsets"],
                          "sha256": hashlib.sha256(resp.tensor.data).hexdigest(),
                          "shape": [str(d) for d in resp.tensor.shape]}
    segments = comp.segment(text)
    recorded["keys"]["complm"] = {
        "cache_id": comp.cache_id,
        "keys": [segment_key(ns, "complm", comp.cache_id, s.text)
                 for ns in ("default", "tenant-a") for s in segments[:8]],
        "segments": [[s.start, s.end, s.n_tokens] for s in segments],
        "value_sha256": [hashlib.sha256(codec.encode(comp.kind, v)).hexdigest()
                         for v in comp.encode([s.text for s in segments[:3]])],
    }
    path.write_text(json.dumps(recorded, indent=1, sort_keys=True))


if __name__ == "__main__":
    asyncio.run(main())

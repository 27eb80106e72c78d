"""Start-up reads every model file once: `verify` checks each file's sha256
against the manifest, and `fingerprint` then trusts the manifest instead of
reading the weights again (SmolLM2 is ~540 MB)."""

from collections import Counter
from pathlib import Path

from compressors import artifacts


def _build(d: Path) -> None:
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    (d / "extra.bin").write_bytes(b"x" * 1000)
    (d / "config.json").write_text("{}")


def test_start_up_hashes_each_file_once(tmp_path, monkeypatch):
    source = {"test": 1}
    built = artifacts.ensure(tmp_path / "m", source, _build)
    want = artifacts.fingerprint(built)

    # A new process: nothing memoised.
    monkeypatch.setattr(artifacts, "_FINGERPRINTS", {})
    monkeypatch.setattr(artifacts, "_SHA256S", {})
    reads = Counter()
    blocks = artifacts.file_blocks
    monkeypatch.setattr(artifacts, "file_blocks", lambda p: (reads.update([Path(p).name]), blocks(p))[1])

    path = artifacts.ensure(tmp_path / "m", source, _build)  # what ensure_* does at start-up
    assert artifacts.fingerprint(path) == want                # what the compressor does next
    assert artifacts.fingerprint(path) == want
    assert reads == Counter({"model.safetensors": 1, "extra.bin": 1, "config.json": 1})

    # A changed file is read again (size and mtime are part of the memo's key).
    (path / "extra.bin").write_bytes(b"y" * 1001)
    assert artifacts.fingerprint(path) != want
    assert reads["extra.bin"] == 2 and reads["model.safetensors"] == 2


def test_fingerprint_unchanged_by_memoising(tmp_path):
    import hashlib

    _build(tmp_path)
    h = hashlib.sha256()
    for p in sorted(tmp_path.glob("*")):
        if p.suffix in (".safetensors", ".bin"):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    assert artifacts.fingerprint(tmp_path) == h.hexdigest()

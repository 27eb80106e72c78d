"""`segpress batch`: output, failures as rows, kill and resume, server mode,
Ray, cache warming. Real model, real Redis, real server and a local Ray."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DATA, ROOT
from helpers import assert_faithful

from service import cli

N_DOCS = 60
PART_ROWS = 3


def make_docs(n: int) -> list[dict]:
    """Distinct documents (no two share a segment) from the sample's paragraphs."""
    paras = [p for p in (DATA / "sample.txt").read_text().split("\n\n") if p.strip()]
    return [{"id": f"doc-{i}", "text": f"Chunk {i}. {paras[i % len(paras)]}"} for i in range(n)]


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("batch-in") / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in make_docs(N_DOCS)))
    return path


@pytest.fixture(scope="module")
def common(model_dir, redis_proc, tmp_path_factory) -> list[str]:
    # --batch-size 1: one segment per forward pass, so a segment's scores do
    # not depend on which segments shared its padded batch (float noise that
    # can flip a word at the budget's edge), and runs compare exactly.
    return ["--llmlingua2-model", model_dir, "--redis-url", redis_proc.url,
            "--cache-dir", str(tmp_path_factory.mktemp("batch-cache")),
            "--part-rows", str(PART_ROWS), "--rate", "0.5", "--batch-size", "1"]


def batch(*args: str) -> dict:
    """Runs `segpress batch ... --json` in this process; returns the summary."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["batch", *args, "--json"])
    assert rc == 0, out.getvalue()
    return json.loads(out.getvalue())


def segpress(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def content(out_dir) -> pa.Table:
    """The output in input order, without the cache columns (which depend on
    what was cached before)."""
    return pq.read_table(out_dir).sort_by("row").drop_columns(["cache_hits", "cache_misses"])


@pytest.fixture(scope="module")
def reference(docs_file, common, tmp_path_factory) -> Path:
    """An uninterrupted local run over docs_file."""
    out = tmp_path_factory.mktemp("batch-ref") / "out"
    s = batch(str(docs_file), str(out), *common, "--namespace", "batch-ref")
    assert (s["rows"], s["ok"], s["output_rows"]) == (N_DOCS, N_DOCS, N_DOCS)
    assert s["parts"] == N_DOCS // PART_ROWS
    assert s["cache_misses"] >= N_DOCS and s["tokens_per_s"] > 0
    return out


def test_output_rows(reference, docs_file):
    t = content(reference)
    assert t.schema.names[:4] == ["id", "row", "code", "message"]
    docs = make_docs(N_DOCS)
    assert t.column("id").to_pylist() == [d["id"] for d in docs]
    assert set(t.column("code").to_pylist()) == {0}
    for doc, text, orig, comp in zip(docs, *(t.column(c).to_pylist() for c in
                                     ("text", "original_tokens", "compressed_tokens"))):
        assert_faithful(doc["text"], text)
        assert 0 < comp <= orig * 0.5 + 1


def test_failing_rows_are_reported_and_the_job_goes_on(common, tmp_path):
    good = make_docs(3)
    lines = [json.dumps(d).encode() for d in good[:2]] + [
        json.dumps({"id": "empty", "text": "   "}).encode(),
        json.dumps({"id": "long", "text": "word " * 2000}).encode(),
        json.dumps({"id": "number", "text": 42}).encode(),
        b'{"id": "latin1", "text": "caf\xe9"}',
        json.dumps({"text": "a text without an id"}).encode(),
        b"this line is not JSON",
        b"",  # blank lines are skipped, but keep their row number
        json.dumps({"id": "doc-0", "text": "the same id again"}).encode(),
        json.dumps(good[2]).encode(),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    s = batch(str(path), str(tmp_path / "out"), *common, "--namespace", "batch-fail",
              "--max-request-bytes", "5000")
    assert (s["rows"], s["ok"], s["duplicates_skipped"]) == (9, 3, 1)
    assert s["failures"] == {"INVALID_ARGUMENT": 5, "RESOURCE_EXHAUSTED": 1}
    t = content(tmp_path / "out").to_pylist()
    got = {r["row"]: (r["id"], r["code"], r["message"]) for r in t}
    assert got == {
        0: ("doc-0", 0, ""),
        1: ("doc-1", 0, ""),
        2: ("empty", 3, "contexts[0] is empty or only whitespace"),
        3: ("long", 8, got[3][2]),
        4: ("number", 3, "text must be a string, got int"),
        5: ("latin1", 3, "text is not valid UTF-8"),
        6: (None, 3, "missing id (field 'id')"),
        7: (None, 3, got[7][2]),
        10: ("doc-2", 0, ""),
    }
    assert "max_request_bytes=5000" in got[3][2]
    assert got[7][2].startswith("line 8 is not valid JSON")
    assert [r["text"] is None for r in t] == [code != 0 for _, code, _ in got.values()]


def test_kill_and_resume_gives_the_uninterrupted_output(reference, docs_file, common, tmp_path,
                                                        capsys):
    out = tmp_path / "out"
    args = [str(docs_file), str(out), *common, "--namespace", "batch-resume"]
    proc = segpress("batch", *args)
    deadline = time.time() + 300
    while len(list(out.glob("part-*.parquet"))) < 3:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no parts written"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(out.glob("part-*.parquet")))
    assert 3 <= written < N_DOCS // PART_ROWS, "killed too late to test resuming"

    s = batch(*args)
    assert s["parts_done_before"] == written
    assert s["rows"] == N_DOCS - written * PART_ROWS  # only the missing parts are redone
    assert content(out).equals(content(reference))
    ids = pq.read_table(out).column("id").to_pylist()
    assert sorted(ids) == sorted(d["id"] for d in make_docs(N_DOCS))  # each id once
    assert not list(out.glob(".*.tmp"))

    # A changed argument set is refused, naming the difference.
    assert cli.main(["batch", *[{"0.5": "0.4"}.get(a, a) for a in args]]) == 2
    assert "rate: 0.5 -> 0.4" in capsys.readouterr().err


def test_parquet_input_with_named_columns(reference, common, tmp_path):
    docs = make_docs(N_DOCS)
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"doc_id": [d["id"] for d in docs],
                             "body": [d["text"] for d in docs]}), path, row_group_size=7)
    out = tmp_path / "out"
    s = batch(str(path), str(out), *common, "--namespace", "batch-ref",
              "--id-field", "doc_id", "--text-field", "body")
    assert s["cache_hit_ratio"] == 1.0  # the same texts as the reference run
    assert content(out).equals(content(reference))


def test_server_mode_and_the_cache_is_warm_afterwards(reference, docs_file, common, client,
                                                       server, tmp_path):
    out = tmp_path / "out"
    s = batch(str(docs_file), str(out), *common, "--server", server.target,
              "--namespace", "batch-server")
    assert s["mode"] == "server" and s["cache_misses"] >= N_DOCS
    # The server batches segments its own way (see `common`): the same rows
    # and token counts as locally, and the texts the server gives for them.
    got, ref = content(out), content(reference)
    assert got.drop_columns(["text"]).equals(ref.drop_columns(["text"]))
    requests = [client.request(d["text"], rate=0.5, namespace="batch-server")
                for d in make_docs(N_DOCS)]
    texts = [item.response.text for item in client.compress_stream(requests)]
    assert got.column("text").to_pylist() == texts

    doc = make_docs(N_DOCS)[7]["text"]
    for namespace in ("batch-server", "batch-ref"):  # warmed by the server, by a local run
        st = client.compress([doc], rate=0.3, namespace=namespace).stats
        assert (st.cache_hits, st.cache_misses) == (st.segments, 0), namespace
    st = client.compress([doc], rate=0.3, namespace="batch-cold").stats
    assert st.cache_misses == st.segments

    # --cache-only warms the cache and writes nothing.
    s = batch(str(docs_file), *common, "--cache-only", "--namespace", "batch-warm")
    assert s["output"] is None and s["cache_misses"] >= N_DOCS
    st = client.compress([doc], namespace="batch-warm").stats
    assert (st.cache_hits, st.cache_misses) == (st.segments, 0)


def test_ray_gives_the_local_results(reference, docs_file, common, tmp_path):
    out = tmp_path / "out"
    p = segpress("batch", str(docs_file), str(out), *common, "--namespace", "batch-ray",
                 "--ray", "--ray-actors", "2", "--json",
                 env={**os.environ, "RAY_ADDRESS": ""})
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr
    s = json.loads(stdout)
    assert (s["mode"], s["rows"], s["ok"]) == ("ray", N_DOCS, N_DOCS)
    assert s["cache_misses"] >= N_DOCS  # its own namespace: computed on Ray, not cached
    assert content(out).equals(content(reference))


def test_soft_token_output_row_takes_the_context_rows_from_the_response_tensor():
    from segpress import pb
    from segpress.tensors import from_numpy, to_numpy

    from service.batch import files, parts

    rows = np.arange(12, dtype=np.float32).reshape(4, 3) / 4  # [4, 3], exact in bfloat16
    resp = pb.CompressResponse(
        tensor=from_numpy(rows, "bfloat16", segment_offsets=[0, 1, 4]),
        contexts=[pb.CompressedContext(original_tokens=9, compressed_tokens=4, segments=2,
                                       row_start=0, row_end=4, segment_start=0, segment_end=2)],
        stats=pb.Stats(segments=2, cache_misses=2))
    row = parts.output_row(files.Record(row=0, id="d", text="x"), 0, "", resp)
    assert (row["tensor_dtype"], row["tensor_shape"]) == ("bfloat16", [4, 3])
    assert row["tensor"] == resp.tensor.data and "text" not in row
    back = pb.Tensor(dtype=pb.DTYPE_BFLOAT16, shape=row["tensor_shape"], data=row["tensor"])
    assert np.array_equal(to_numpy(back), rows)
    table = pa.Table.from_pylist([row], schema=files.SCHEMA)  # the Parquet columns, unchanged
    assert table.column("tensor_shape").to_pylist() == [[4, 3]]


def test_an_integer_id_and_a_string_id_that_read_the_same_are_refused(tmp_path):
    from service.batch import files

    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": 7, "text": "seven"}\n{"id": 8, "text": "eight"}\n'
                    '{"id": "7", "text": "a different record"}\n')
    with pytest.raises(files.BatchError, match="row 2 has id '7' and row 0 has id 7"):
        files.plan(files.open_input(str(path), "auto", "id", "text"), 10)
    # Integers and strings that do not collide, and repeats of one type, are fine.
    path.write_text('{"id": 7, "text": "seven"}\n{"id": "x7", "text": "other"}\n'
                    '{"id": 7, "text": "seven again"}\n')
    plan = files.plan(files.open_input(str(path), "auto", "id", "text"), 10)
    assert (plan.duplicates, plan.duplicate_ids) == (1, ["7"])


def test_a_byte_order_mark_before_the_first_line_is_skipped(tmp_path):
    from service.batch import files

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a", "text": "first"}).encode() + b"\n"
                     + json.dumps({"id": "b", "text": "second"}).encode() + b"\n")
    source = files.open_input(str(path), "auto", "id", "text")
    (part,) = files.plan(source, 10).parts
    records = source.read(part)
    assert [(r.id, r.text, r.error) for r in records] == [("a", "first", ""), ("b", "second", "")]

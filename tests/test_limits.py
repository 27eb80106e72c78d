"""Limits that must hold before the work, and outputs that must stay exact,
against a real `segpress serve` (the default llmlingua2 model) and a real
Redis (issue 15): requests far over the token limit refused in time and
memory that do not grow with the input, force tokens bounded, overlapping
force tokens and long unspaced runs, responses over the message limit,
`segpress batch --server` with records too large to send, and cache values
that do not fit their segment.

This server runs with max_request_tokens=20000 and max_message_bytes=3 MiB.
"""

import contextlib
import io
import json
import time
import uuid

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ServerProcess
from helpers import assert_faithful, assert_subsequence, wait_until

from cache import codec
from compressors.base import Kind
from segpress import SegpressClient, SegpressError
from service import cli

MAX_TOKENS = 20_000
MAX_MESSAGE = 3 << 20
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def srv(redis_proc, model_dir, tmp_path_factory):
    s = ServerProcess({
        "SEGPRESS_REDIS_URL": redis_proc.url,
        "SEGPRESS_LLMLINGUA2_MODEL": model_dir,
        "SEGPRESS_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "SEGPRESS_MAX_REQUEST_TOKENS": str(MAX_TOKENS),
        "SEGPRESS_MAX_MESSAGE_BYTES": str(MAX_MESSAGE),
        "SEGPRESS_SELECTION": "false",
    })
    yield s
    s.stop()


@pytest.fixture()
def client(srv):
    with SegpressClient(srv.target, timeout_s=120, max_message_bytes=64 << 20) as c:
        yield c


@pytest.fixture()
def ns():
    return "t-" + uuid.uuid4().hex[:12]


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def refused_cost(srv, client, request) -> tuple[SegpressError, float, int]:
    """The error, the seconds it took and how far the server's peak RSS rose."""
    pid = srv.proc.pid
    before = _status(pid, "VmRSS")
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    t0 = time.perf_counter()
    with pytest.raises(SegpressError) as e:
        client._call(client._stub.Compress, request, 120)
    return e.value, time.perf_counter() - t0, _status(pid, "VmHWM") - before


# -- 1. token limit: refused before the work ------------------------------------


@pytest.mark.parametrize("text,what", [
    ("a " * 1_000_000, "1M ASCII words"),
    ("\ud55c\uad6d\uc5b4 " * 125_000, "1M tokens of Hangul (no ASCII: counted in pieces)"),
    ("\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35" * 150_000, "900k characters of Thai, unspaced"),
], ids=["ascii", "hangul", "thai"])
def test_far_over_the_token_limit_is_refused_before_the_work(srv, client, text, what):
    # Before: 1M words took 5 s and +800 MB of peak RSS to refuse (4M: 26 s, +2.8 GB).
    err, seconds, peak = refused_cost(srv, client, SegpressClient.request([text]))
    assert err.code == EXHAUSTED and f"max_request_tokens={MAX_TOKENS}" in err.details
    assert seconds < 1.5, (what, seconds)
    assert peak < 100 << 20, (what, peak >> 20)


def test_just_over_the_token_limit_is_refused_and_at_it_is_served(client, ns):
    with pytest.raises(SegpressError) as e:
        client.compress(["a " * (MAX_TOKENS + 1)], namespace=ns)
    assert e.value.code == EXHAUSTED and f"max_request_tokens={MAX_TOKENS}" in e.value.details
    with pytest.raises(SegpressError) as e:  # 8 tokens a word, no ASCII: the exact count
        client.compress(["\ud55c\uad6d\uc5b4 " * (MAX_TOKENS // 8 + 1)], namespace=ns)
    assert e.value.code == EXHAUSTED
    r = client.compress(["a " * MAX_TOKENS], namespace=ns, rate=0.5)
    assert r.stats.original_tokens == MAX_TOKENS


# -- 2. force tokens bounded ---------------------------------------------------------


def test_huge_force_tokens_are_refused_at_once(srv, client):
    # Before: four 1 MB force tokens took 8 s and were answered OK.
    req = SegpressClient.request(["Alpha beta gamma, a short context of a few words."],
                                 force_tokens=[c * 600_000 for c in "wxyz"])
    err, seconds, peak = refused_cost(srv, client, req)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_force_token_bytes=256" in err.details
    assert seconds < 1.0 and peak < 50 << 20
    assert client.info().limits.max_force_token_bytes == 256


# -- 5, 6. exact text ------------------------------------------------------------------


@pytest.mark.parametrize("text,force", [
    ("Alpha beta.\n\nGamma delta.", ["\n", "\n\n"]),
    ("  Alpha  beta.\n\nGamma  delta.", [" ", "  ", "\n", "\n\n"]),
    ("a\n\n\nb", ["\n\n", "\n"]),
    ("x -- y --- z", ["--", "---", "- "]),
])
def test_overlapping_force_tokens_never_repeat_text(client, ns, text, force):
    r = client.compress([text], rate=1.0, force_tokens=force, namespace=ns)
    assert_subsequence(text, r.text)
    if all(c.isspace() or c.isalnum() or c == "." for c in text):
        assert r.text == text  # everything kept, every space forced: the input itself
    for rate in (0.1, 0.5):
        assert_subsequence(text, client.compress([text], rate=rate, force_tokens=force,
                                                 namespace=ns).text)


@pytest.mark.parametrize("text", [
    "two",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a" * 12,   # Thai: 120 characters, no space
    "31415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421170679",
    "\u3072\u3089\u304c\u306a\u3067\u3059" * 10,                           # kana: one WordPiece word
    "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB",
], ids=["two", "thai", "digits", "kana", "blob"])
@pytest.mark.parametrize("rate", [0.1, 0.33, 0.5])
def test_no_context_comes_back_empty(client, ns, text, rate):
    r = client.compress([text, "Some ordinary words around it, for company."], rate=rate,
                        namespace=ns)
    out = r.contexts[0]
    assert out.text and out.compressed_tokens >= 1
    assert_subsequence(text, out.text)
    if out.original_tokens >= 8:  # long enough to be cut: kept in pieces, not whole
        assert out.compressed_tokens < out.original_tokens
        assert len(out.text) < len(text)


# -- 7, 8. responses over the message limit ------------------------------------------


WIDE = "Alpha" + " " * 1_700_000 + "omega."  # 2 tokens; the gap is kept: twice 1.7 MB out


def test_a_response_over_the_message_limit_is_refused_and_logged(srv, client, ns):
    # Before: the send failed ("Sent message larger than max") after the
    # access log and the metrics had counted the call "Compress OK".
    ok, refused = (srv.output().count(f"Compress {c} ") for c in ("OK", "RESOURCE_EXHAUSTED"))
    with pytest.raises(SegpressError) as e:
        client.compress([WIDE], rate=1.0, namespace=ns)
    assert e.value.code == EXHAUSTED and f"max_message_bytes={MAX_MESSAGE}" in e.value.details
    wait_until(lambda: srv.output().count("Compress RESOURCE_EXHAUSTED ") == refused + 1,
               "the refusal in the access log")
    assert srv.output().count("Compress OK ") == ok


def run_batch(*args: str) -> tuple[int, dict | str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["batch", *args, "--json"])
    try:
        return rc, json.loads(out.getvalue())
    except ValueError:
        return rc, out.getvalue()


def test_batch_over_a_server_writes_rows_for_records_too_large(srv, tmp_path, ns):
    records = [
        {"id": "small-1", "text": "The first record is short and fine."},
        {"id": "too-large", "text": "word " * 800_000},   # 4 MB: more than the server takes
        {"id": "wide", "text": WIDE},                      # fits, but its response would not
        {"id": "small-2", "text": "The last record is short too."},
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    rc, summary = run_batch(str(path), str(out), "--server", srv.target, "--rate", "1.0",
                            "--namespace", ns)
    assert rc == 0, summary
    assert summary["rows"] == 4 and summary["failures"] == {"RESOURCE_EXHAUSTED": 2}
    rows = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert rows["small-1"]["code"] == rows["small-2"]["code"] == 0
    assert rows["too-large"]["code"] == EXHAUSTED.value[0]
    assert f"max_message_bytes={MAX_MESSAGE}" in rows["too-large"]["message"]
    assert rows["wide"]["code"] == EXHAUSTED.value[0]
    rc, again = run_batch(str(path), str(out), "--server", srv.target, "--rate", "1.0",
                          "--namespace", ns)
    assert rc == 0 and again["parts_done_before"] == again["parts"]


# -- 11. cache values that do not fit their segment --------------------------------


def test_an_inconsistent_cache_value_is_a_miss_and_overwritten(client, redis_proc, ns):
    text = ("The harbour froze in the winter of 1902. Ships waited outside for eleven "
            f"days, and the town ran short of coal. Run {uuid.uuid4().hex}.")
    first = client.compress([text], rate=0.5, namespace=ns)
    r = redis_proc.client()
    (key,) = r.keys(f"segpress:v1:{ns}:llmlingua2:*")
    good = codec.decode(Kind.WORD_SCORES, r.get(key))
    n = len(good["scores"])
    for bad in (
        {**good, "spans": np.zeros((n, 2), np.int32) + [0, 3]},          # all start at 0
        {**good, "scores": good["scores"][:-1]},                          # short scores
        {**good, "tokens": -good["tokens"]},                              # negative counts
        {**good, "spans": good["spans"] + len(text)},                     # past the text
    ):
        r.set(key, codec.encode(Kind.WORD_SCORES, bad))
        again = client.compress([text], rate=0.5, namespace=ns)
        assert again.text == first.text and again.stats.cache_errors == 1
        stored = codec.decode(Kind.WORD_SCORES, r.get(key))
        assert np.array_equal(stored["spans"], good["spans"])
        assert_faithful(text, again.text)


@pytest.fixture(scope="module")
def complm():
    from compressors.complm import CompLLM
    from compressors.models import ensure_smollm2
    from service.config import Config

    return CompLLM(ensure_smollm2(Config().models_dir), dtype="float32")


@pytest.mark.slow
def test_complm_checks_cached_rows_against_the_segment(complm, sample_text):
    segments = complm.segment(sample_text)[:40]
    values = complm.encode([s.text for s in segments])
    t0 = time.perf_counter()
    assert all(complm.check_encoded(v, s) for v, s in zip(values, segments))
    assert time.perf_counter() - t0 < 0.5  # 40 segments: a tokenizer call each
    v, seg = values[0], segments[0]
    ces = v["ces"]
    for bad in ({"ces": ces[:-1]}, {"ces": np.concatenate([ces, ces])}, {"ces": ces[:, :-1]},
                {"ces": ces.astype(np.float64)}, {"ces": np.full_like(ces, np.nan)},
                {"ces": ces, "extra": ces}, {}):
        assert not complm.check_encoded(bad, seg)
    assert not complm.check_encoded(values[1], seg) or len(values[1]["ces"]) == len(ces)

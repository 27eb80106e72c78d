"""The Go client (clients/go): vet, its tests against the live server, the
example program, and the generated Go code being current.

Needs only the `go` binary (the tests fail without it, unless
SEGPRESS_SKIP_GO=1); modules come from the Go proxy the first time.
"""

import os
import shutil
import subprocess
import sys

import pytest
from conftest import DATA, ROOT
from helpers import assert_faithful

GO = shutil.which("go")
GO_DIR = ROOT / "clients" / "go"
# Without `go` these tests fail rather than skip, so a CI run cannot pass
# without the Go client; SEGPRESS_SKIP_GO=1 skips them on purpose.
pytestmark = pytest.mark.skipif(GO is None and os.environ.get("SEGPRESS_SKIP_GO") == "1",
                                reason="SEGPRESS_SKIP_GO=1 and no `go` binary on PATH")


@pytest.fixture(autouse=True)
def go_on_path():
    if GO is None:
        pytest.fail("no `go` binary on PATH: install Go (go.dev/dl), or set SEGPRESS_SKIP_GO=1 to skip "
                    "the Go client's tests")


def go(*args: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([GO, *args], cwd=GO_DIR, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"go {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r


def test_go_code_is_formatted_and_vetted():
    gofmt = os.path.join(os.path.dirname(os.path.realpath(GO)), "gofmt")
    unformatted = subprocess.run([gofmt, "-l", "."], cwd=GO_DIR, capture_output=True, text=True)
    assert unformatted.stdout == "", f"gofmt -l:\n{unformatted.stdout}"
    go("vet", "./...")


def test_go_tests_pass_against_the_live_server(server):
    r = go("test", "-count=1", "-v", "./...", env={**os.environ, "SEGPRESS_TEST_TARGET": server.target})
    assert "--- SKIP" not in r.stdout, r.stdout  # the live tests really ran
    for name in ("TestCompressText", "TestCompressStreamIsolatesABadItem",
                 "TestErrorsKeepTheGRPCCode", "TestInfo", "TestDefaultDeadlineApplies",
                 "TestTLSWithCAFileAndToken", "TestMutualTLS", "TestRowsDecodesEveryDtype",
                 "TestContextRowsSlicesTheResponseTensor", "TestQueryAwareSelection"):
        assert f"--- PASS: {name}" in r.stdout, r.stdout


def test_example_program(server, tmp_path, sample_text):
    exe = tmp_path / "segpress-example"
    go("build", "-o", str(exe), "./cmd/segpress-example")
    run = dict(capture_output=True, text=True, timeout=60)
    from_file = subprocess.run([exe, "-addr", server.target, "-rate", "0.4", DATA / "sample.txt"], **run)
    assert from_file.returncode == 0, from_file.stderr
    assert_faithful(sample_text, from_file.stdout.strip())
    assert from_file.stderr.startswith("# ") and "tokens" in from_file.stderr
    text = "The example program also reads its text from standard input."
    from_stdin = subprocess.run([exe, "-addr", server.target, "-rate", "0.5", "-"], input=text, **run)
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert_faithful(text, from_stdin.stdout.strip())
    bad = subprocess.run([exe, "-addr", server.target, "-rate", "2", "-"], input=text, **run)
    assert bad.returncode == 1 and "code = InvalidArgument" in bad.stderr


def test_generated_go_code_is_current():
    r = subprocess.run([sys.executable, "clients/generate.py", "--check", "--lang", "go"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr

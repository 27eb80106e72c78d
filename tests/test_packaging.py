"""The generated code is current, the client installs alone, the CLI works."""

import json
import os
import subprocess
import sys
import venv

from conftest import ROOT, DATA
from helpers import assert_faithful, segpress


def test_generated_python_code_is_current():
    r = subprocess.run([sys.executable, "clients/generate.py", "--check"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_client_installs_and_works_without_torch(server, tmp_path):
    env_dir = tmp_path / "client-venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", str(ROOT / "clients" / "python")],
                   check=True, capture_output=True)
    code = (
        "import importlib.util, sys\n"
        "from segpress import SegpressClient\n"
        "assert importlib.util.find_spec('torch') is None\n"
        f"with SegpressClient({server.target!r}) as c:\n"
        "    r = c.compress(['The client was installed on its own, without torch.'], rate=0.5)\n"
        "    print(r.stats.segments, c.info().default_compressor)\n"
    )
    out = subprocess.run([py, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "llmlingua2"]


def test_cli_compress_against_server(server):
    sample = DATA / "sample.txt"
    r = segpress("compress", "--server", server.target, "--rate", "0.4", str(sample))
    assert r.returncode == 0, r.stderr
    assert_faithful(sample.read_text(), r.stdout.strip())
    r = segpress("compress", "--server", server.target, "--target-tokens", "40", "--json", str(sample))
    resp = json.loads(r.stdout)
    assert int(resp["stats"]["compressed_tokens"]) <= 40
    assert resp["stats"]["segments"] >= 2 and resp["model"]["fingerprint"]
    r = segpress("compress", "--server", server.target, "--rate", "1.5", str(sample))
    assert r.returncode == 2 and "llmlingua2.rate must be in (0, 1]" in r.stderr


def test_cli_compress_locally_from_stdin(model_dir):
    env = {**os.environ, "SEGPRESS_LLMLINGUA2_MODEL": model_dir}
    text = "Local compression reads stdin and needs no server. " * 5
    r = segpress("compress", "--rate", "0.5", input=text, env=env)
    assert r.returncode == 0, r.stderr
    assert_faithful(text, r.stdout.strip())


def test_cli_info(server):
    r = segpress("info", "--server", server.target)
    assert json.loads(r.stdout)["compressors"][0]["name"] == "llmlingua2"

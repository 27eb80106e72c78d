"""The Python clients, blocking and asyncio, over real gRPC.

Against the live `server`: compress, a stream with a bad item, error codes,
info, and the example. Against a `segpress serve` with mutual TLS and auth
tokens: the same client options end to end. Retries and TLS details against
an in-process grpc.aio server whose answers the test chooses.
"""

import asyncio
import random
import subprocess
import sys
import textwrap
import threading
import time

import grpc
import grpc.aio
import pytest
from certs import make_certs
from conftest import ROOT, ServerProcess
from helpers import assert_faithful

from segpress import AsyncSegpressClient, Retry, SegpressClient, SegpressError, pb
from segpress.v1 import segpress_pb2_grpc as pb_grpc

EXAMPLES = ROOT / "clients" / "python" / "examples"
FAST_RETRY = Retry(attempts=3, initial_backoff_s=0.01)


class AsyncOnALoop:
    """AsyncSegpressClient driven from blocking test code: each call runs to
    completion on a loop of its own, so one test body checks both clients."""

    def __init__(self, target: str, **options):
        self.loop = asyncio.new_event_loop()
        self.client = self._run(self._open(target, options))

    @staticmethod
    async def _open(target, options) -> AsyncSegpressClient:
        return AsyncSegpressClient(target, **options)  # a grpc.aio channel needs a running loop

    def _run(self, coro):
        return self.loop.run_until_complete(coro)

    def compress(self, *args, **kw):
        return self._run(self.client.compress(*args, **kw))

    def info(self, **kw):
        return self._run(self.client.info(**kw))

    def compress_stream(self, requests, **kw):
        async def collect():
            return [r async for r in self.client.compress_stream(requests, **kw)]
        return self._run(collect())

    def close(self):
        self._run(self.client.close())
        self.loop.close()


@pytest.fixture(params=["sync", "async"])
def connect(request):
    """Opens clients of one kind, blocking or asyncio; closes them after the test."""
    opened = []

    def open_client(target: str, **options):
        kind = SegpressClient if request.param == "sync" else AsyncOnALoop
        opened.append(kind(target, **options))
        return opened[-1]

    yield open_client
    for c in opened:
        c.close()


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(SegpressError) as e:
        call()
    return e.value.code


# --- the live server ---------------------------------------------------------

def test_compress(connect, server, sample_text):
    c = connect(server.target)
    r = c.compress([sample_text, "A second, much shorter context."], rate=0.4, request_id="py-1")
    assert r.request_id == "py-1" and r.compressor == "llmlingua2" and len(r.contexts) == 2
    assert_faithful(sample_text, r.contexts[0].text)
    assert r.text == "\n\n".join(ctx.text for ctx in r.contexts)
    assert 0 < r.stats.compressed_tokens <= round(0.4 * r.stats.original_tokens) + 1


def test_stream_isolates_a_bad_item_in_the_middle(connect, server):
    c = connect(server.target)
    texts = [f"Client stream item {i} is about topic {i * 11}." for i in range(7)]
    reqs = [SegpressClient.request(t, rate=0.5, request_id=str(i)) for i, t in enumerate(texts)]
    reqs[3] = SegpressClient.request([""], request_id="3")
    out = list(c.compress_stream(reqs))
    assert [o.index for o in out] == list(range(7))
    assert out[3].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "contexts[0] is empty" in out[3].status.message and not out[3].HasField("response")
    for i, o in enumerate(out):
        if i != 3:
            assert o.status.code == 0 and o.response.request_id == str(i)
            assert_faithful(texts[i], o.response.text)


def test_errors_keep_the_grpc_code(connect, server):
    c = connect(server.target)
    with pytest.raises(SegpressError) as e:
        c.compress(["x"], rate=1.5)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "llmlingua2.rate must be in (0, 1]" in e.value.details
    assert code_of(lambda: c.compress(["x"] * 17)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_info(connect, server):
    info = connect(server.target).info()
    assert info.version and info.default_compressor == "llmlingua2"
    assert [x.name for x in info.compressors] == ["llmlingua2"]
    assert info.limits.max_contexts == 16


def test_async_stream_takes_an_async_iterable_and_stops_early(server):
    async def main():
        async with AsyncSegpressClient(server.target) as c:
            async def reqs():
                for i in range(5):
                    yield c.request(f"Asynchronously generated request {i}.", request_id=str(i))
            got = []
            async for r in c.compress_stream(reqs()):
                got.append(r.response.request_id)
                if len(got) == 2:
                    break
            assert got == ["0", "1"]
            assert (await c.info()).version  # the channel still works
    asyncio.run(main())


def test_compress_example(server):
    r = subprocess.run([sys.executable, EXAMPLES / "compress.py", "--server", server.target],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "1 3 contexts[0] is empty or only whitespace" in r.stdout
    assert "INVALID_ARGUMENT contexts[0] is empty or only whitespace" in r.stdout
    assert "['llmlingua2']" in r.stdout


def test_tensors_example():
    r = subprocess.run([sys.executable, EXAMPLES / "tensors.py"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("[")[0] == "float32 (5, 4) "
    assert r.stdout.split()[-2:] == ["(3,", "4)"]  # the second context's rows


# --- a real `segpress serve` with mutual TLS and tokens ---------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def secure_server(redis_proc, model_dir, tmp_path_factory, certs):
    s = ServerProcess({
        "SEGPRESS_REDIS_URL": redis_proc.url,
        "SEGPRESS_LLMLINGUA2_MODEL": model_dir,
        "SEGPRESS_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "SEGPRESS_AUTH_TOKENS": "client-token=client-tests",
        "SEGPRESS_TLS_CERT": str(certs["server_cert"]),
        "SEGPRESS_TLS_KEY": str(certs["server_key"]),
        "SEGPRESS_TLS_CLIENT_CA": str(certs["ca"]),
    }, credentials=grpc.ssl_channel_credentials(
        certs["ca"].read_bytes(), certs["client_key"].read_bytes(), certs["client_cert"].read_bytes()))
    yield s
    s.stop()


def mtls(certs) -> dict:
    return dict(root_certificates=certs["ca"], client_cert=certs["client_cert"],
                client_key=certs["client_key"])


def test_token_and_mutual_tls_against_segpress_serve(connect, secure_server, certs):
    c = connect(secure_server.target, token="client-token", **mtls(certs))
    text = "Only a client with a certificate and a token gets this compressed."
    assert_faithful(text, c.compress(text, rate=0.5).text)
    assert list(c.compress_stream([SegpressClient.request(text)]))[0].status.code == 0
    assert c.info().compressors
    wrong = connect(secure_server.target, token="wrong-token", **mtls(certs))
    assert code_of(lambda: wrong.compress(text)) == grpc.StatusCode.UNAUTHENTICATED
    no_cert = connect(secure_server.target, token="client-token", retry=Retry(attempts=1),
                      root_certificates=certs["ca"])
    assert code_of(lambda: no_cert.compress(text)) == grpc.StatusCode.UNAVAILABLE


def test_compress_example_over_mutual_tls(secure_server, certs):
    r = subprocess.run(
        [sys.executable, EXAMPLES / "compress.py", "--server", secure_server.target,
         "--ca", certs["ca"], "--cert", certs["client_cert"], "--key", certs["client_key"],
         "--token", "client-token"],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "['llmlingua2']" in r.stdout


# --- an in-process grpc.aio server with scripted answers ---------------------

class Scripted(pb_grpc.SegpressServicer):
    """Compress waits `delay_s`, fails the first calls with `failures`, then
    echoes the first context; Info records the caller's token and
    certificate name."""

    def __init__(self, *failures: grpc.StatusCode, delay_s: float = 0.0):
        self.failures = list(failures)
        self.delay_s = delay_s
        self.calls = 0
        self.authorization = None
        self.client_name = None

    async def Compress(self, request, context):
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.calls <= len(self.failures):
            await context.abort(self.failures[self.calls - 1], f"scripted failure {self.calls}")
        return pb.CompressResponse(text=request.contexts[0])

    async def Info(self, request, context):
        self.authorization = dict(context.invocation_metadata()).get("authorization")
        names = context.auth_context().get("x509_common_name", [b""])
        self.client_name = names[0].decode()
        return pb.InfoResponse(version="in-process")


class InProcessServer:
    """A grpc.aio server for `servicer` on 127.0.0.1, run on an event loop
    in a thread of its own so that blocking clients can call it too."""

    def __init__(self, servicer, credentials=None):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server, port = self._run(self._start(servicer, credentials))
        self.target = f"127.0.0.1:{port}"

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    @staticmethod
    async def _start(servicer, credentials):
        server = grpc.aio.server()
        pb_grpc.add_SegpressServicer_to_server(servicer, server)
        address = "127.0.0.1:0"
        port = (server.add_secure_port(address, credentials) if credentials
                else server.add_insecure_port(address))
        await server.start()
        return server, port

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._run(self.server.stop(None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def test_unavailable_is_retried_until_success(connect):
    servicer = Scripted(grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    with InProcessServer(servicer) as srv:
        assert connect(srv.target, retry=FAST_RETRY).compress("third time lucky").text == "third time lucky"
    assert servicer.calls == 3


def test_retries_stop_after_the_attempts(connect):
    servicer = Scripted(*[grpc.StatusCode.UNAVAILABLE] * 5)
    with InProcessServer(servicer) as srv:
        assert code_of(lambda: connect(srv.target, retry=FAST_RETRY).compress("x")) \
            == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  grpc.StatusCode.UNAUTHENTICATED])
def test_other_codes_are_never_retried(connect, code):
    servicer = Scripted(code)
    with InProcessServer(servicer) as srv:
        c = connect(srv.target, retry=FAST_RETRY)
        with pytest.raises(SegpressError) as e:
            c.compress("x")
    assert e.value.code == code and e.value.details == "scripted failure 1"
    assert servicer.calls == 1


def test_the_default_deadline_applies_and_is_not_retried(connect):
    servicer = Scripted(delay_s=2)
    with InProcessServer(servicer) as srv:
        c = connect(srv.target, timeout_s=0.2, retry=FAST_RETRY)
        t0 = time.monotonic()
        assert code_of(lambda: c.compress("slow")) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 1
    assert servicer.calls == 1


def test_backoff_grows_exponentially_with_full_jitter():
    class Unavailable(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

    retry = Retry(attempts=10, initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0)
    far = time.monotonic() + 3600
    random.seed(7)
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        delays = [retry.delay_s(Unavailable(), attempt, far) for _ in range(200)]
        assert 0 <= min(delays) and max(delays) <= cap and max(delays) > cap / 2
    assert retry.delay_s(Unavailable(), 10, far) is None  # out of attempts
    assert retry.delay_s(Unavailable(), 1, time.monotonic()) is None  # past the deadline
    with pytest.raises(ValueError):
        Retry(attempts=0)


@pytest.fixture(scope="module")
def tls_credentials(certs):
    key_pair = [(certs["server_key"].read_bytes(), certs["server_cert"].read_bytes())]
    ca = certs["ca"].read_bytes()
    return {
        "tls": grpc.ssl_server_credentials(key_pair),
        "mtls": grpc.ssl_server_credentials(key_pair, root_certificates=ca, require_client_auth=True),
    }


def test_tls_with_a_ca_and_a_token(connect, certs, tls_credentials):
    servicer = Scripted()
    with InProcessServer(servicer, tls_credentials["tls"]) as srv:
        # The CA as bytes or as a path.
        for ca in (certs["ca"].read_bytes(), certs["ca"], str(certs["ca"])):
            assert connect(srv.target, root_certificates=ca, token="s3cret").info().version == "in-process"
            assert servicer.authorization == "Bearer s3cret"
        # The system roots do not trust the test CA; plaintext is no TLS at all.
        for options in (dict(tls=True), {}):
            c = connect(srv.target, retry=Retry(attempts=1), **options)
            assert code_of(c.info) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(connect, certs, tls_credentials):
    servicer = Scripted()
    with InProcessServer(servicer, tls_credentials["mtls"]) as srv:
        assert connect(srv.target, **mtls(certs)).info().version == "in-process"
        assert servicer.client_name == "segpress test client"
        c = connect(srv.target, root_certificates=certs["ca"], retry=Retry(attempts=1))
        assert code_of(c.info) == grpc.StatusCode.UNAVAILABLE


def test_client_cert_needs_its_key(certs):
    with pytest.raises(ValueError, match="together"):
        SegpressClient("127.0.0.1:1", client_cert=certs["client_cert"])


# --- docs/clients.md ---------------------------------------------------------

def readme_blocks(section: str, lang: str) -> list[str]:
    text = (ROOT / "docs" / "clients.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [b.split("\n", 1)[1] for b in body.split("```")[1::2] if b.startswith(lang + "\n")]


@pytest.mark.parametrize("section,lang,sources", [
    ("Python client", "python", sorted(EXAMPLES.glob("*.py"))),
    ("Go client", "go", sorted((ROOT / "clients" / "go").rglob("*.go"))),
])
def test_readme_snippets_are_cut_from_tested_code(section, lang, sources):
    """Each code block of the section appears verbatim, at some indentation,
    in a file the tests run."""
    code = [f.read_text() for f in sources]
    blocks = readme_blocks(section, lang)
    assert blocks
    for block in blocks:
        indented = [textwrap.indent(block, prefix) for prefix in ("", "    ", "        ", "\t", "\t\t")]
        assert any(b in c for b in indented for c in code), f"not in {lang} sources:\n{block}"

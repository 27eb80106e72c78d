"""Authentication, tenancy, TLS and mutual TLS against real servers."""

import grpc
import pytest
from certs import make_certs
from conftest import ServerProcess

from segpress import pb
from segpress.v1 import segpress_pb2_grpc as pb_grpc

TOKENS = "tok-a=tenant-a,tok-b=tenant-b"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_credentials(certs, client_cert: bool = False):
    kw = {}
    if client_cert:
        kw = dict(private_key=certs["client_key"].read_bytes(),
                  certificate_chain=certs["client_cert"].read_bytes())
    return grpc.ssl_channel_credentials(root_certificates=certs["ca"].read_bytes(), **kw)


@pytest.fixture(scope="module")
def tls_server(redis_proc, model_dir, tmp_path_factory, certs):
    tokens_file = tmp_path_factory.mktemp("auth") / "tokens"
    tokens_file.write_text("# token namespace\ntok-c tenant-c\n")
    s = ServerProcess({
        "SEGPRESS_REDIS_URL": redis_proc.url,
        "SEGPRESS_LLMLINGUA2_MODEL": model_dir,
        "SEGPRESS_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "SEGPRESS_AUTH_TOKENS": TOKENS,
        "SEGPRESS_AUTH_TOKENS_FILE": str(tokens_file),
        "SEGPRESS_TLS_CERT": str(certs["server_cert"]),
        "SEGPRESS_TLS_KEY": str(certs["server_key"]),
    }, credentials=tls_credentials(certs))
    yield s
    s.stop()


def call(server, req, token=None, method="Compress"):
    with server.channel() as ch:
        stub = pb_grpc.SegpressStub(ch)
        md = [("authorization", f"Bearer {token}")] if token else []
        return getattr(stub, method)(req, metadata=md, timeout=30)


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


REQ = pb.CompressRequest(contexts=["Tenants never see each other's cache entries."])


def test_tokens_are_required_and_checked(tls_server):
    assert code_of(lambda: call(tls_server, REQ))[0] == grpc.StatusCode.UNAUTHENTICATED
    code, msg = code_of(lambda: call(tls_server, REQ, token="tok-x"))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "unknown token" in msg
    with tls_server.channel() as ch:
        stub = pb_grpc.SegpressStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Compress(REQ, metadata=[("authorization", "Basic dG9rLWE=")], timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(lambda: call(tls_server, pb.InfoRequest(), method="Info"))[0] \
        == grpc.StatusCode.UNAUTHENTICATED
    assert call(tls_server, REQ, token="tok-a").text
    assert call(tls_server, REQ, token="tok-c").text  # from the tokens file
    assert call(tls_server, pb.InfoRequest(), token="tok-b", method="Info").compressors


def test_a_token_is_confined_to_its_namespace(tls_server, redis_proc):
    text = "Only tenant A has compressed this sentence before."
    req = pb.CompressRequest(contexts=[text])
    assert call(tls_server, req, token="tok-a").stats.cache_misses == 1
    assert call(tls_server, req, token="tok-a").stats.cache_hits == 1
    # Tenant B asks for the same text: a miss, so B learns nothing about A.
    assert call(tls_server, req, token="tok-b").stats.cache_misses == 1
    # Naming another tenant's namespace is refused; naming your own is fine.
    code, msg = code_of(lambda: call(
        tls_server, pb.CompressRequest(contexts=[text], namespace="tenant-b"), token="tok-a"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "tenant-b" in msg
    own = call(tls_server, pb.CompressRequest(contexts=[text], namespace="tenant-a"), token="tok-a")
    assert own.stats.cache_hits == 1
    keys = {k.decode().split(":")[2] for k in redis_proc.client().keys(b"segpress:v1:tenant-*")}
    assert {"tenant-a", "tenant-b"} <= keys


def test_stream_uses_the_token_namespace(tls_server):
    with tls_server.channel() as ch:
        stub = pb_grpc.SegpressStub(ch)
        md = [("authorization", "Bearer tok-b")]
        reqs = [pb.CompressRequest(contexts=["stream under auth"]),
                pb.CompressRequest(contexts=["x"], namespace="tenant-a")]
        out = list(stub.CompressStream(iter(reqs), metadata=md, timeout=30))
        assert out[0].status.code == 0
        assert out[1].status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        with pytest.raises(grpc.RpcError) as e:
            list(stub.CompressStream(iter(reqs), timeout=30))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_plaintext_client_cannot_talk_to_tls_server(tls_server):
    with grpc.insecure_channel(tls_server.target) as ch:
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.SegpressStub(ch).Info(pb.InfoRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(redis_proc, model_dir, tmp_path, certs):
    s = ServerProcess({
        "SEGPRESS_REDIS_URL": redis_proc.url,
        "SEGPRESS_LLMLINGUA2_MODEL": model_dir,
        "SEGPRESS_CACHE_DIR": str(tmp_path),
        "SEGPRESS_TLS_CERT": str(certs["server_cert"]),
        "SEGPRESS_TLS_KEY": str(certs["server_key"]),
        "SEGPRESS_TLS_CLIENT_CA": str(certs["ca"]),
    }, credentials=tls_credentials(certs, client_cert=True))
    try:
        assert call(s, REQ).text  # with a client certificate
        with grpc.secure_channel(s.target, tls_credentials(certs)) as ch:
            with pytest.raises(grpc.RpcError) as e:
                pb_grpc.SegpressStub(ch).Compress(REQ, timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        s.stop()


def test_cli_reaches_a_secured_server(tls_server, certs):
    from helpers import segpress

    base = ["compress", "--server", tls_server.target, "--ca", str(certs["ca"]), "--rate", "0.5",
            "sample"]
    ok = segpress(*base, "--token", "tok-a")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip()
    denied = segpress(*base)
    assert denied.returncode == 2 and "UNAUTHENTICATED" in denied.stderr


def test_batch_reaches_a_secured_server(tls_server, certs, tmp_path, capsys):
    import json

    import pyarrow.parquet as pq

    from service import cli

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Document {i} is about the "
                                        f"lighthouse keeper's log, entry {i}."}) + "\n"
                            for i in range(3)))
    flags = ["--server", tls_server.target, "--ca", str(certs["ca"]), "--rate", "0.5", "--json"]
    assert cli.main(["batch", str(docs), str(tmp_path / "denied"), *flags]) != 0
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert cli.main(["batch", str(docs), str(tmp_path / "out"), *flags, "--token", "tok-a"]) == 0
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert sorted(r["id"] for r in rows) == ["d0", "d1", "d2"]
    assert all(r["code"] == 0 and r["text"] for r in rows), rows

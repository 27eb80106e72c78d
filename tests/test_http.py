"""The HTTP/JSON API (service/http.py) against a real server and Redis, with
a real HTTP client (httpx): every endpoint, auth, every error mapping, a body
over the limit, malformed JSON, a stream with failing items, HTTPS, and the
same output as the gRPC client's for the same request.

The fast tests run the real gRPC and HTTP servers in this process on the
tiny compressor (tests/tiny.py); the last ones use `segpress serve` with
the real llmlingua2 model (the `server` fixture, which serves HTTP too).
"""

import json
import socket
import ssl
import threading
import uuid

import grpc
import httpx
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from segpress import SegpressClient, SegpressError
from segpress.v1 import segpress_pb2 as pb
from service.config import Config
from service.http import HTTP_STATUS, SERVICE_NAME
from tiny import Tiny

from conftest import free_port
from helpers import InProcessServer

TOKENS = "tok-a=alpha,tok-b=beta"
A = {"authorization": "Bearer tok-a"}
LIMIT = 4096  # max_message_bytes of the in-process server


class Failing(Tiny):
    """Tiny, except that a segment with "boom" fails in the model and one
    with "wait" waits until the test lets it go."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def encode(self, texts):
        if any("boom" in t for t in texts):
            raise RuntimeError("the model failed")
        if any("wait" in t for t in texts):
            self.release.wait(60)
        return super().encode(texts)


@pytest.fixture(scope="module")
def tiny():
    return Failing()


@pytest.fixture(scope="module")
def srv(redis_proc, tiny):
    config = Config(port=0, http_port=free_port(), redis_url=redis_proc.url, max_contexts=4,
                    metrics_port=0, auth_tokens=TOKENS, max_message_bytes=LIMIT)
    s = InProcessServer(config, {"tiny": tiny})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(srv):
    with httpx.Client(base_url=srv.http_url, headers=A, timeout=60) as c:
        yield c


def ns() -> str:
    return "t-" + uuid.uuid4().hex[:12]


def error(r: httpx.Response, status: int, code: str, says: str = "") -> str:
    """The response is Google's JSON error with this HTTP status and gRPC code."""
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert (e["code"], e["status"]) == (status, code) and says in e["message"], e
    return e["message"]


def test_the_mapping_is_googles():
    # google.rpc.Code's HTTP mapping (Google's API design guide, "Errors").
    guide = {"OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
             "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
             "PERMISSION_DENIED": 403, "UNAUTHENTICATED": 401, "RESOURCE_EXHAUSTED": 429,
             "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
             "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500}
    assert {c.name: s for c, s in HTTP_STATUS.items()} == guide
    assert set(HTTP_STATUS) == set(grpc.StatusCode)


def test_compress_equals_the_grpc_clients_output(srv, http):
    body = {"contexts": ["the keeper wrote in his log every night", "a second short context"],
            "namespace": "alpha", "requestId": "r-1"}
    r = http.post("/v1/compress", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    got = json_format.ParseDict(r.json(), pb.CompressResponse())
    with SegpressClient(srv.target, token="tok-a") as c:
        want = c.compress(body["contexts"], namespace="alpha", request_id="r-1")
    for m in (got, want):
        m.stats.ClearField("timings")
        m.stats.ClearField("cache_hits")
        m.stats.ClearField("cache_misses")
    assert got == want and got.text and got.request_id == "r-1"
    assert r.json()["contexts"][0]["kept"] is True  # fields with default values are written


def test_a_second_run_is_all_cache_hits_and_snake_case_is_read(http):
    body = {"contexts": [f"fresh words {uuid.uuid4().hex} for the cache"], "cache_mode": "CACHE_MODE_USE"}
    first, second = (http.post("/v1/compress", json=body).json()["stats"] for _ in range(2))
    assert first["cacheMisses"] == first["segments"] and second["cacheHits"] == second["segments"]


def test_info_health_openapi_and_page(srv, http):
    info = http.get("/v1/info").json()
    assert info["defaultCompressor"] == "tiny" and info["limits"]["maxContexts"] == 4
    assert httpx.get(srv.http_url + "/healthz").json() == {"status": "SERVING"}
    assert httpx.get(srv.http_url + "/readyz").json() == {"status": "SERVING"}
    doc = httpx.get(srv.http_url + "/openapi.json").json()
    assert "/v1/compress" in doc["paths"] and "CompressRequest" in doc["components"]["schemas"]
    page = httpx.get(srv.http_url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


def test_readyz_follows_grpc_health(srv):
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    srv.call(srv.running.health.set(SERVICE_NAME, not_serving))
    try:
        r = httpx.get(srv.http_url + "/readyz")
        assert (r.status_code, r.json()) == (503, {"status": "NOT_SERVING"})
        assert httpx.get(srv.http_url + "/healthz").status_code == 200
    finally:
        srv.call(srv.running.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING))
    assert httpx.get(srv.http_url + "/readyz").status_code == 200


def test_openapi_json_is_not_stale():
    from service.openapi import OUT, render

    assert OUT.read_text(encoding="utf-8") == render(), "run: python -m service.openapi"


def test_auth(srv):
    url = srv.http_url + "/v1/compress"
    body = {"contexts": ["some words here"]}
    error(httpx.post(url, json=body), 401, "UNAUTHENTICATED", "missing 'authorization")
    error(httpx.post(url, json=body, headers={"authorization": "Basic x"}), 401,
          "UNAUTHENTICATED", "Bearer")
    error(httpx.post(url, json=body, headers={"authorization": "Bearer nope"}), 401,
          "UNAUTHENTICATED", "unknown token")
    error(httpx.get(srv.http_url + "/v1/info"), 401, "UNAUTHENTICATED")
    error(httpx.post(url, json={**body, "namespace": "alpha"},
                     headers={"authorization": "Bearer tok-b"}), 403, "PERMISSION_DENIED", "namespace")
    assert httpx.post(url, json=body, headers={"authorization": "Bearer tok-b"}).status_code == 200


def test_bad_requests(http):
    error(http.post("/v1/compress", json={"contexts": []}), 400, "INVALID_ARGUMENT", "contexts is empty")
    error(http.post("/v1/compress", json={"contexts": ["a"] * 5}), 429, "RESOURCE_EXHAUSTED",
          "max_contexts=4")
    error(http.post("/v1/compress", content=b'{"contexts": ["a"'), 400, "INVALID_ARGUMENT", "not JSON")
    error(http.post("/v1/compress", content=b"\xff\xfe"), 400, "INVALID_ARGUMENT", "not JSON")
    error(http.post("/v1/compress", json=["a"]), 400, "INVALID_ARGUMENT", "expected a JSON object")
    error(http.post("/v1/compress", json={"context": ["a"]}), 400, "INVALID_ARGUMENT", "context")
    error(http.post("/v1/compress", json={"contexts": "a"}), 400, "INVALID_ARGUMENT", "contexts")
    error(http.post("/v1/compress", json={"contexts": ["a"], "cacheMode": "NEVER"}), 400,
          "INVALID_ARGUMENT", "cacheMode")
    error(http.get("/v1/nothing"), 404, "NOT_FOUND", "/v1/nothing")
    error(http.get("/v1/compress"), 405, "UNIMPLEMENTED", "GET")


def test_deadlines(http, tiny):
    body = {"contexts": ["some words here"]}
    error(http.post("/v1/compress?timeout=0", json=body), 504, "DEADLINE_EXCEEDED", "deadline")
    error(http.post("/v1/compress", json=body, headers={"grpc-timeout": "0n"}), 504, "DEADLINE_EXCEEDED")
    error(http.post("/v1/compress?timeout=soon", json=body), 400, "INVALID_ARGUMENT", "timeout")
    error(http.post("/v1/compress", json=body, headers={"grpc-timeout": "5 minutes"}), 400,
          "INVALID_ARGUMENT", "grpc-timeout")
    assert http.post("/v1/compress?timeout=30", json=body, headers={"grpc-timeout": "30S"}).status_code == 200
    # A deadline that passes while the model works: 504, and the server goes on.
    tiny.release.clear()
    try:
        error(http.post("/v1/compress?timeout=0.3", json={"contexts": [f"wait {ns()}"]}), 504,
              "DEADLINE_EXCEEDED", "deadline passed")
    finally:
        tiny.release.set()
    assert http.post("/v1/compress", json=body).status_code == 200


def test_internal_error_is_500_and_the_server_goes_on(http):
    error(http.post("/v1/compress", json={"contexts": [f"boom {ns()}"]}), 500, "INTERNAL", "server log")
    assert http.post("/v1/compress", json={"contexts": ["fine words"]}).status_code == 200


def test_overload_is_503(redis_proc):
    config = Config(port=0, http_port=free_port(), redis_url=redis_proc.url, metrics_port=0,
                    max_queue=0)
    s = InProcessServer(config, {"tiny": Tiny()})
    try:
        error(httpx.post(s.http_url + "/v1/compress", json={"contexts": ["a b"]}), 503,
              "UNAVAILABLE", "max_queue=0")
    finally:
        s.stop()


def test_a_body_over_the_limit_is_refused(http, srv):
    big = {"contexts": ["word " * LIMIT]}
    error(http.post("/v1/compress", json=big), 413, "RESOURCE_EXHAUSTED", f"max_message_bytes={LIMIT}")

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"contexts": ["'
        yield b"x" * LIMIT
        yield b'"]}'

    error(http.post("/v1/compress", content=chunks()), 413, "RESOURCE_EXHAUSTED")
    # Refused before the body ends: the answer comes while the client still
    # holds the rest of a body it announced.
    with socket.create_connection(("127.0.0.1", int(srv.http_url.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(b"POST /v1/compress HTTP/1.1\r\nhost: x\r\nauthorization: Bearer tok-a\r\n"
                     b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % (LIMIT + 10) + b"y" * (LIMIT + 10) + b"\r\n")
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]


def stream(http, lines: list, **kw) -> httpx.Response:
    return http.post("/v1/compress:stream", content="\n".join(lines) + "\n", **kw)


def test_stream_results_in_order_with_failing_items(http):
    lines = [json.dumps({"contexts": ["first context words"], "requestId": "0"}),
             json.dumps({"contexts": []}),
             "{not json",
             "",
             json.dumps({"contexts": [f"boom {ns()}"]}),
             json.dumps({"contexts": ["last context words"], "requestId": "4"})]
    r = stream(http, lines)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    items = [json.loads(line) for line in r.text.splitlines()]
    assert [int(i["index"]) for i in items] == [0, 1, 2, 3, 4]
    assert [i["status"]["code"] for i in items] == [0, 3, 3, 13, 0]
    assert "contexts is empty" in items[1]["status"]["message"]
    assert "not JSON" in items[2]["status"]["message"]
    assert [items[0]["response"]["requestId"], items[4]["response"]["requestId"]] == ["0", "4"]
    assert "response" not in items[1]


def test_stream_errors(srv, http):
    one = [json.dumps({"contexts": ["some words"]})]
    error(stream(httpx.Client(base_url=srv.http_url), one), 401, "UNAUTHENTICATED")
    assert stream(http, []).text == ""
    # A line over the limit ends the stream: 413 when it is the first, else
    # the items before it and then the error as the last line.
    error(stream(http, [json.dumps({"contexts": ["w " * LIMIT]})]), 413, "RESOURCE_EXHAUSTED")
    r = stream(http, one + [json.dumps({"contexts": ["w " * LIMIT]})])
    items = [json.loads(line) for line in r.text.splitlines()]
    assert r.status_code == 200 and items[0]["status"]["code"] == 0
    assert items[1]["error"]["status"] == "RESOURCE_EXHAUSTED", items


def test_https_with_the_servers_certificate(redis_proc, tmp_path):
    from certs import make_certs

    certs = make_certs(tmp_path)
    config = Config(port=0, http_port=free_port(), redis_url=redis_proc.url, metrics_port=0,
                    tls_cert=str(certs["server_cert"]), tls_key=str(certs["server_key"]))
    s = InProcessServer(config, {"tiny": Tiny()})
    port = s.running.http.port
    try:
        r = httpx.post(f"https://127.0.0.1:{port}/v1/compress", json={"contexts": ["a b c"]},
                       verify=ssl.create_default_context(cafile=str(certs["ca"])))
        assert r.status_code == 200 and r.json()["text"]
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"http://127.0.0.1:{port}/v1/compress", json={"contexts": ["a b c"]})
    finally:
        s.stop()


# -- the real model, `segpress serve` ----------------------------------------

def test_curl_request_equals_grpc_on_the_real_model(server, client, sample_text):
    body = {"contexts": [sample_text, "The keeper lit the lamp at dusk."],
            "llmlingua2": {"rate": 0.33}}
    r = httpx.post(server.http_url + "/v1/compress", json=body, timeout=120)
    assert r.status_code == 200, r.text
    got = json_format.ParseDict(r.json(), pb.CompressResponse())
    want = client.compress(body["contexts"], rate=0.33)
    for m in (got, want):
        m.stats.ClearField("timings")
        m.stats.ClearField("cache_hits")
        m.stats.ClearField("cache_misses")
    assert got == want and 0.2 < got.stats.rate < 0.45


def test_stream_on_the_real_model(server, client, sample_text):
    reqs = [{"contexts": [sample_text], "llmlingua2": {"rate": 0.5}},
            {"contexts": [sample_text], "llmlingua2": {"rate": 2.0}}]
    r = httpx.post(server.http_url + "/v1/compress:stream",
                   content="".join(json.dumps(q) + "\n" for q in reqs), timeout=120)
    ok, bad = (json.loads(line) for line in r.text.splitlines())
    assert ok["response"]["text"] == client.compress([sample_text], rate=0.5).text
    assert bad["status"]["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    with pytest.raises(SegpressError) as e:
        client.compress([sample_text], rate=2.0)
    assert bad["status"]["message"] == e.value.details

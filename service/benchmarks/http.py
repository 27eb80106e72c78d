"""`segpress bench --only http`: section 6, HTTP/JSON against gRPC for the
same request to one `segpress serve` process (service/http.py beside the
gRPC server), every segment cached and cold, interleaved in one run."""

from segpress import SegpressClient

from .serving import _server, bench_texts, timed


def http_vs_grpc(bench, n_docs: int) -> dict:
    """The same request over HTTP/JSON and over gRPC to one server (a
    keep-alive connection and a channel), both parsing the response;
    cached (every segment in Redis) and cold (cache bypassed)."""
    import logging

    import httpx
    from google.protobuf import json_format

    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    texts = bench_texts(bench.sample, n_docs)
    server = _server(bench.config, http=True)
    out = {"tokens": bench.tokens(texts), "documents": n_docs}
    with server as target, SegpressClient(target, timeout_s=600) as grpc_client, \
            httpx.Client(base_url=server.http_url, timeout=600) as http:
        for name, cache in (("cached", "use"), ("cold", "bypass")):
            req = SegpressClient.request(texts, rate=bench.rate, cache=cache, namespace="bench-http")
            body = json_format.MessageToJson(req).encode()

            def over_http():
                r = http.post("/v1/compress", content=body,
                              headers={"content-type": "application/json"})
                r.raise_for_status()
                return r.json()

            first = over_http()
            assert first["text"] == grpc_client.compress(texts, rate=bench.rate, cache=cache,
                                                         namespace="bench-http").text
            m = timed({"grpc": lambda: grpc_client.compress(texts, rate=bench.rate, cache=cache,
                                                            namespace="bench-http"),
                       "http": over_http}, bench.repeats)
            out[name] = {"grpc_ms": round(m["grpc"] * 1000, 2), "http_ms": round(m["http"] * 1000, 2),
                         "http_vs_grpc": round(m["http"] / m["grpc"], 3)}
    return out


def print_http(h: dict) -> None:
    print(f"\n6. HTTP/JSON against gRPC, the same request ({h['documents']} documents, "
          f"{h['tokens']} tokens) to one server:")
    for name in ("cached", "cold"):
        v = h[name]
        print(f"   {name:<6}: {v['http_ms']:.1f} ms over HTTP vs {v['grpc_ms']:.1f} ms over gRPC "
              f"= {v['http_vs_grpc']:.2f}x")

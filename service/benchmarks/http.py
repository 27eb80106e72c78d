"""`segpress bench --only http`: section 6, HTTP/JSON against gRPC for the
same request to one `segpress serve` process (service/http.py beside the
gRPC server), every segment cached and cold, interleaved in one run."""

from segpress import SegpressClient


def http_vs_grpc(bench, texts: list[str], server, timed) -> dict:
    """`texts` as one request over HTTP/JSON and over gRPC to `server` (a
    serving.py `_server` with HTTP on; a keep-alive connection and a
    channel), both parsing the response; every segment cached (in Redis)
    and cold (cache bypassed); `timed` is serving.py's interleaved timer."""
    import logging

    import httpx
    from google.protobuf import json_format

    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    out = {"tokens": bench.tokens(texts), "documents": len(texts)}
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

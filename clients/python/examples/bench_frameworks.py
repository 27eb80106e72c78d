"""What the framework integrations add to a bare client call.

    python clients/python/examples/bench_frameworks.py --server 127.0.0.1:50051 --requests 200

The same request (five short documents, rate 0.5; every segment cached
after the warm-up) through SegpressClient.compress and through each
integration, interleaved round by round in one process on one server. The
overhead is the median over rounds of (integration - bare client) time; the
integrations that are not installed are left out. No question is sent unless
--query: with one, the server's query-aware selection adds the same time to
both sides, and its variance to the measurement.
"""

import argparse
import json
import statistics
import time

from segpress import SegpressClient

QUESTION = "When was the lighthouse at Cape Ardmore first lit?"
TEXTS = [
    "The lighthouse at Cape Ardmore was first lit on the evening of 14 March 1851. "
    "Crowds gathered on the cliffs, and the keeper fired a signal gun when the lamp caught.",
    "Its keeper, Thomas Wren, recorded that the lamp burned eleven pints of oil before dawn. "
    "He trimmed the wicks every four hours and wrote each trimming in the log.",
    "In 1903 the oil lamp was replaced by an incandescent vapour burner, "
    "which doubled the light's range to twenty-two nautical miles on a clear night.",
    "The harbour at Ardmore silted up in the 1880s, and the fishing fleet moved to Kilcrea, "
    "twelve miles along the coast, where the water stayed deep at low tide.",
    "Storm petrels nest in the rocks below the lighthouse from May to September; "
    "the keepers counted them each summer and sent the tallies to the Royal Society.",
]
PARAMS = dict(rate=0.5)


def integrations(server: str, query: str | None) -> dict:
    """name -> a call of that integration on TEXTS, for those installed."""
    calls = {}
    try:
        from langchain_core.documents import Document

        from segpress.langchain import SegpressCompressor

        lc, lc_docs = SegpressCompressor(target=server, **PARAMS), [Document(page_content=t) for t in TEXTS]
        calls["langchain"] = lambda: lc.compress_documents(lc_docs, query or "")
    except ImportError:
        pass
    try:
        from llama_index.core.schema import NodeWithScore, TextNode

        from segpress.llamaindex import SegpressNodePostprocessor

        li, nodes = SegpressNodePostprocessor(target=server, **PARAMS), [NodeWithScore(node=TextNode(text=t)) for t in TEXTS]
        calls["llamaindex"] = lambda: li.postprocess_nodes(nodes, query_str=query)
    except ImportError:
        pass
    try:
        from haystack import Document as HaystackDocument

        from segpress.haystack import SegpressDocumentCompressor

        hs, hs_docs = SegpressDocumentCompressor(target=server, **PARAMS), [HaystackDocument(content=t) for t in TEXTS]
        calls["haystack"] = lambda: hs.run(hs_docs, query)
    except ImportError:
        pass
    return calls


def bench(server: str, requests: int, query: str | None = None, warmup: int = 20) -> dict:
    with SegpressClient(server) as client:
        calls = {"bare client": lambda: client.compress(TEXTS, query=query, **PARAMS),
                 **integrations(server, query)}
        times: dict[str, list[float]] = {name: [] for name in calls}
        for i in range(warmup + requests):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                if i >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
    bare = times["bare client"]
    return {name: {
        "median_ms": statistics.median(t),
        "overhead_ms": statistics.median(a - b for a, b in zip(t, bare)),
        "requests": len(t),
    } for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:50051")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--query", action="store_true", help=f"send the question {QUESTION!r}")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = ap.parse_args()
    result = bench(args.server, args.requests, QUESTION if args.query else None)
    if args.json:
        print(json.dumps(result))
        return
    for name, r in result.items():
        print(f"{name:12} median {r['median_ms']:6.3f} ms   overhead {r['overhead_ms']:+.3f} ms"
              f"   ({r['requests']} requests)")


if __name__ == "__main__":
    main()

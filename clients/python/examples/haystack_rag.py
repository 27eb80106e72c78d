"""Retrieve, then compress with segpress: Haystack.

    pip install "./clients/python[haystack]"
    python clients/python/examples/haystack_rag.py --server 127.0.0.1:50051

SegpressDocumentCompressor is a Haystack component: inputs `documents` and
`query`, output `documents`. (Haystack sends usage telemetry unless
HAYSTACK_TELEMETRY_ENABLED=False.)
"""

import argparse
import asyncio

from haystack import Document, Pipeline
from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
from haystack.document_stores.in_memory import InMemoryDocumentStore

from segpress.haystack import SegpressDocumentCompressor

QUESTION = "When was the lighthouse at Cape Ardmore first lit?"
DOCS = [
    Document(content=text, meta={"source": f"log-{i}"}) for i, text in enumerate([
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
    ])
]


def rag_pipeline(server: str, **params) -> Pipeline:
    store = InMemoryDocumentStore()
    store.write_documents(DOCS)
    pipeline = Pipeline()
    pipeline.add_component("retriever", InMemoryBM25Retriever(store, top_k=3))
    pipeline.add_component("compressor", SegpressDocumentCompressor(
        target=server,              # or client=SegpressClient(...), client_options=dict(token=...)
        on_error="raise",           # "passthrough": log a warning, return the documents as they are
        **params,                   # rate=0.5 or target_tokens=60, granularity="sentence", ...
    ))
    pipeline.connect("retriever.documents", "compressor.documents")
    return pipeline


def blocking(server: str) -> None:
    pipeline = rag_pipeline(server, rate=0.5)
    result = pipeline.run({"retriever": {"query": QUESTION}, "compressor": {"query": QUESTION}})
    for doc in result["compressor"]["documents"]:
        m = doc.meta                # the document's own metadata, plus segpress's
        print(m["source"], m["segpress_original_tokens"], "->", m["segpress_compressed_tokens"],
              "tokens:", doc.content)


async def with_asyncio(server: str) -> None:
    pipeline = rag_pipeline(server, target_tokens=60, granularity="sentence")
    result = await pipeline.run_async(  # run_async: the component calls the async client
        {"retriever": {"query": QUESTION}, "compressor": {"query": QUESTION}})
    for doc in result["compressor"]["documents"]:
        print(doc.meta["source"], doc.content)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:50051")
    args = ap.parse_args()
    blocking(args.server)
    asyncio.run(with_asyncio(args.server))


if __name__ == "__main__":
    main()

"""Retrieve, then compress with segpress: LlamaIndex.

    pip install "./clients/python[llamaindex]"
    python clients/python/examples/llamaindex_rag.py --server 127.0.0.1:50051

SegpressNodePostprocessor is a llama-index-core node postprocessor: call it
on retrieved nodes, or give it to a query engine's node_postprocessors.
"""

import argparse
import asyncio

from llama_index.core import Document, SimpleKeywordTableIndex
from llama_index.core.llms import MockLLM

from segpress.llamaindex import SegpressNodePostprocessor

QUESTION = "When was the lighthouse at Cape Ardmore first lit?"
DOCS = [
    Document(text=text, metadata={"source": f"log-{i}"}) for i, text in enumerate([
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
# An in-memory keyword index; its simple keyword extraction needs no LLM, so a mock stands in.
INDEX = SimpleKeywordTableIndex.from_documents(DOCS, llm=MockLLM())


def blocking(server: str) -> None:
    postprocessor = SegpressNodePostprocessor(
        target=server,              # or client=SegpressClient(...), client_options=dict(token=...)
        rate=0.5,                   # or target_tokens=60; granularity="sentence"
        on_error="raise",           # "passthrough": log a warning, return the nodes as they are
    )
    nodes = INDEX.as_retriever().retrieve(QUESTION)
    for n in postprocessor.postprocess_nodes(nodes, query_str=QUESTION):
        m = n.node.metadata         # the node's own metadata, plus segpress's (hidden from the LLM)
        print(m["source"], m["segpress_original_tokens"], "->", m["segpress_compressed_tokens"],
              "tokens:", n.node.get_content())

    # In a query engine: the LLM reads the compressed nodes.
    engine = INDEX.as_query_engine(llm=MockLLM(), node_postprocessors=[postprocessor])
    response = engine.query(QUESTION)
    print([n.node.metadata["segpress_cache_hits"] for n in response.source_nodes])
    postprocessor.close()


async def with_asyncio(server: str) -> None:
    postprocessor = SegpressNodePostprocessor(target=server, target_tokens=60, granularity="sentence")
    nodes = await INDEX.as_retriever().aretrieve(QUESTION)
    for n in await postprocessor.apostprocess_nodes(nodes, query_str=QUESTION):  # on the async client
        print(n.node.metadata["source"], n.node.get_content())
    await postprocessor.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:50051")
    args = ap.parse_args()
    blocking(args.server)
    asyncio.run(with_asyncio(args.server))


if __name__ == "__main__":
    main()

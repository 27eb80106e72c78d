"""Retrieve, then compress with segpress: LangChain.

    pip install "./clients/python[langchain]" langchain-classic
    python clients/python/examples/langchain_rag.py --server 127.0.0.1:50051

SegpressCompressor is a langchain-core BaseDocumentCompressor; the
ContextualCompressionRetriever that runs it after a retriever is in
langchain-classic (langchain.retrievers before LangChain 1.0).
"""

import argparse
import asyncio
import re

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from segpress.langchain import SegpressCompressor

QUESTION = "When was the lighthouse at Cape Ardmore first lit?"
DOCS = [
    Document(page_content=text, metadata={"source": f"log-{i}"}) for i, text in enumerate([
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


class KeywordRetriever(BaseRetriever):
    """In-memory retriever: the k documents sharing the most words with the query."""

    documents: list[Document]
    k: int = 3

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        words = set(re.findall(r"\w+", query.lower()))
        overlap = [len(words & set(re.findall(r"\w+", d.page_content.lower()))) for d in self.documents]
        best = sorted(range(len(self.documents)), key=lambda i: -overlap[i])[: self.k]
        return [self.documents[i] for i in best]


def blocking(server: str) -> None:
    compressor = SegpressCompressor(
        target=server,              # or client=SegpressClient(...), client_options=dict(token=...)
        rate=0.5,                   # or target_tokens=60; granularity="sentence"
        on_error="raise",           # "passthrough": log a warning, return the documents as they are
    )
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=KeywordRetriever(documents=DOCS, k=3))
    for doc in retriever.invoke(QUESTION):
        m = doc.metadata            # the document's own metadata, plus segpress's
        print(m["source"], m["segpress_original_tokens"], "->", m["segpress_compressed_tokens"],
              "tokens,", m["segpress_cache_hits"], "cached segments:", doc.page_content)
    compressor.close()


async def with_asyncio(server: str) -> None:
    compressor = SegpressCompressor(target=server, target_tokens=60, granularity="sentence")
    docs = await KeywordRetriever(documents=DOCS).ainvoke(QUESTION)
    for doc in await compressor.acompress_documents(docs, QUESTION):  # on the async client
        print(doc.metadata["source"], doc.page_content)
    await compressor.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:50051")
    args = ap.parse_args()
    blocking(args.server)
    asyncio.run(with_asyncio(args.server))


if __name__ == "__main__":
    main()

"""segpress as a LangChain document compressor (needs langchain-core:
`pip install "./clients/python[langchain]"`).

    compressor = SegpressCompressor(target="127.0.0.1:50051", rate=0.5)
    docs = compressor.compress_documents(retrieved, "the question")

It is a `BaseDocumentCompressor`, so it also goes into
`ContextualCompressionRetriever(base_compressor=compressor, base_retriever=...)`
(in `langchain_classic.retrievers`; `langchain.retrievers` before LangChain
1.0). The documents' page contents are the contexts of one request, sent with
the query; see `segpress._integration` for the metadata each compressed
document gets and which are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr

from ._integration import Clients, Compressed, acompress_with, check_options, compress_texts, request_options

__all__ = ["SegpressCompressor"]


class SegpressCompressor(BaseDocumentCompressor):
    """Compresses retrieved documents with a segpress server.

    Connect with `target` ("host:port") and `client_options` (the keywords of
    SegpressClient: token, TLS, timeout_s, retry), or pass a `client` (and for
    the async path an `async_client`) you manage. `compressor`, `rate`,
    `target_tokens`, `threshold` (keep every word scoring at least it),
    `granularity` ("word" or "sentence"), `force_tokens`,
    `force_reserve_digit`, `drop_consecutive`, `namespace` and `cache` go into
    every request as in `SegpressClient.compress`, and so do the keywords
    in `options` (for example the query-aware selection's `keep_rate`,
    `ranker`, `order` or `selection=False`); `timeout_s` is its deadline.

    Failures raise `segpress.SegpressError` (its `code` and `details` are
    the gRPC status and the server's message); with `on_error="passthrough"`
    they are logged as a warning and the documents come back uncompressed.
    Soft-token compressors (complm, arc) are refused with ValueError.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    target: str | None = None
    client_options: dict[str, Any] = Field(default_factory=dict, exclude=True)
    client: Any = Field(default=None, exclude=True)
    async_client: Any = Field(default=None, exclude=True)
    compressor: str = ""
    rate: float | None = None
    target_tokens: int | None = None
    threshold: float | None = None
    granularity: str | None = None
    force_tokens: list[str] = Field(default_factory=list)
    force_reserve_digit: bool = False
    drop_consecutive: bool = False
    namespace: str = ""
    cache: str = "use"
    options: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = None
    on_error: Literal["raise", "passthrough"] = "raise"

    _clients: Clients = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        check_options(self)
        self._clients = Clients(self.target, self.client, self.async_client, self.client_options)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """The documents compressed for `query`, in their order."""
        docs = list(documents)
        done = compress_texts(self._clients.sync(), [d.page_content for d in docs], query,
                              request_options(self), self.timeout_s, self.on_error)
        return docs if done is None else [_document(docs[c.index], c) for c in done]

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """`compress_documents` on the async client."""
        docs = list(documents)
        done = await acompress_with(self._clients, [d.page_content for d in docs], query,
                                    request_options(self), self.timeout_s, self.on_error)
        return docs if done is None else [_document(docs[c.index], c) for c in done]

    def close(self) -> None:
        """Closes the blocking client this compressor made (not a given one)."""
        self._clients.close()

    async def aclose(self) -> None:
        """Closes the running loop's async client this compressor made."""
        await self._clients.aclose()


def _document(doc: Document, c: Compressed) -> Document:
    if c.metadata is None:
        return doc
    return doc.model_copy(update={"page_content": c.text, "metadata": {**doc.metadata, **c.metadata}})

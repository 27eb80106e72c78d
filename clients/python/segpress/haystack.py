"""segpress as a Haystack component (needs haystack-ai:
`pip install "./clients/python[haystack]"`).

    pipeline.add_component("compressor", SegpressDocumentCompressor(target="127.0.0.1:50051", rate=0.5))
    pipeline.connect("retriever.documents", "compressor.documents")
    pipeline.run({"retriever": {"query": q}, "compressor": {"query": q}})

Inputs `documents` and `query` (optional), output `documents`. The
documents' contents are the contexts of one request, sent with the query;
see `segpress._integration` for the metadata each compressed document gets
and which are left out. A failed call inside a pipeline reaches the caller
as Haystack's PipelineRuntimeError, whose cause is the SegpressError.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

from ._integration import Clients, Compressed, acompress_with, check_options, compress_texts, request_options
from .aio import AsyncSegpressClient
from .client import SegpressClient

__all__ = ["SegpressDocumentCompressor"]


@component
class SegpressDocumentCompressor:
    """Compresses documents with a segpress server.

    Connect with `target` ("host:port") and `client_options` (the keywords of
    SegpressClient: token, TLS, timeout_s, retry), or pass a `client` (and for
    `run_async` an `async_client`) you manage. `compressor`, `rate`,
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
    `to_dict` leaves out given clients and client_options (they may hold a
    token): a loaded pipeline connects with `target` alone.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        client_options: dict[str, Any] | None = None,
        client: SegpressClient | None = None,
        async_client: AsyncSegpressClient | None = None,
        compressor: str = "",
        rate: float | None = None,
        target_tokens: int | None = None,
        threshold: float | None = None,
        granularity: str | None = None,
        force_tokens: list[str] | None = None,
        force_reserve_digit: bool = False,
        drop_consecutive: bool = False,
        namespace: str = "",
        cache: str = "use",
        options: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        on_error: str = "raise",
    ):
        self.target = target
        self.compressor = compressor
        self.rate = rate
        self.target_tokens = target_tokens
        self.threshold = threshold
        self.granularity = granularity
        self.force_tokens = list(force_tokens or ())
        self.force_reserve_digit = force_reserve_digit
        self.drop_consecutive = drop_consecutive
        self.namespace = namespace
        self.cache = cache
        self.options = dict(options or {})
        self.timeout_s = timeout_s
        self.on_error = on_error
        check_options(self)
        self._clients = Clients(target, client, async_client, client_options)

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document], query: str | None = None) -> dict[str, list[Document]]:
        """The documents compressed for `query`, in their order."""
        done = compress_texts(self._clients.sync(), [d.content for d in documents], query,
                              request_options(self), self.timeout_s, self.on_error)
        return {"documents": documents if done is None else [_document(documents[c.index], c) for c in done]}

    @component.output_types(documents=list[Document])
    async def run_async(self, documents: list[Document], query: str | None = None) -> dict[str, list[Document]]:
        """`run` on the async client."""
        done = await acompress_with(self._clients, [d.content for d in documents], query,
                                    request_options(self), self.timeout_s, self.on_error)
        return {"documents": documents if done is None else [_document(documents[c.index], c) for c in done]}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(
            self, target=self.target, compressor=self.compressor, rate=self.rate,
            target_tokens=self.target_tokens, threshold=self.threshold, granularity=self.granularity,
            force_tokens=self.force_tokens, force_reserve_digit=self.force_reserve_digit,
            drop_consecutive=self.drop_consecutive, namespace=self.namespace, cache=self.cache,
            options=self.options, timeout_s=self.timeout_s, on_error=self.on_error)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegpressDocumentCompressor:
        return default_from_dict(cls, data)

    def close(self) -> None:
        """Closes the blocking client this component made (not a given one)."""
        self._clients.close()

    async def aclose(self) -> None:
        """Closes the running loop's async client this component made."""
        await self._clients.aclose()


def _document(doc: Document, c: Compressed) -> Document:
    if c.metadata is None:
        return doc
    return dataclasses.replace(doc, content=c.text, meta={**doc.meta, **c.metadata})

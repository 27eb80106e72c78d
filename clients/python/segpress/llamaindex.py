"""segpress as a LlamaIndex node postprocessor (needs llama-index-core:
`pip install "./clients/python[llamaindex]"`).

    postprocessor = SegpressNodePostprocessor(target="127.0.0.1:50051", rate=0.5)
    nodes = postprocessor.postprocess_nodes(retriever.retrieve(question), query_str=question)

or `index.as_query_engine(node_postprocessors=[postprocessor], ...)`. The
nodes' texts are the contexts of one request, sent with the query; see
`segpress._integration` for the metadata each compressed node gets (kept out
of the LLM's and the embedder's view of the node) and which are left out.
"""

from __future__ import annotations

from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from ._integration import (
    METADATA_KEYS,
    Clients,
    Compressed,
    acompress_with,
    check_options,
    compress_texts,
    request_options,
)

__all__ = ["SegpressNodePostprocessor"]


class SegpressNodePostprocessor(BaseNodePostprocessor):
    """Compresses retrieved nodes with a segpress server.

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
    they are logged as a warning and the nodes come back uncompressed.
    Soft-token compressors (complm, arc) are refused with ValueError.
    """

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

    @classmethod
    def class_name(cls) -> str:
        return "SegpressNodePostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        done = compress_texts(self._clients.sync(), _texts(nodes), _query(query_bundle),
                              request_options(self), self.timeout_s, self.on_error)
        return nodes if done is None else [_node(nodes[c.index], c) for c in done]

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        done = await acompress_with(self._clients, _texts(nodes), _query(query_bundle),
                                    request_options(self), self.timeout_s, self.on_error)
        return nodes if done is None else [_node(nodes[c.index], c) for c in done]

    def close(self) -> None:
        """Closes the blocking client this postprocessor made (not a given one)."""
        self._clients.close()

    async def aclose(self) -> None:
        """Closes the running loop's async client this postprocessor made."""
        await self._clients.aclose()


def _texts(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]


def _query(query_bundle: QueryBundle | None) -> str | None:
    return query_bundle.query_str if query_bundle is not None else None


def _node(n: NodeWithScore, c: Compressed) -> NodeWithScore:
    if c.metadata is None:
        return n
    node = n.node.model_copy(update={
        "metadata": {**n.node.metadata, **c.metadata},
        "excluded_llm_metadata_keys": _excluded(n.node.excluded_llm_metadata_keys),
        "excluded_embed_metadata_keys": _excluded(n.node.excluded_embed_metadata_keys),
    })
    node.set_content(c.text)
    return NodeWithScore(node=node, score=n.score)


def _excluded(keys: list[str]) -> list[str]:
    return [*keys, *(k for k in METADATA_KEYS if k not in keys)]

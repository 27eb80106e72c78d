"""What the LangChain, LlamaIndex and Haystack integrations share.

Each integration turns its framework's documents into texts, calls
`compress_texts` (or `acompress_texts`) and turns each `Compressed` back into
a document of its framework. Nothing here imports a framework.

A document is sent as one context of a single request, with the query. Its
compressed copy keeps the document's metadata and adds segpress's, under
flat keys (vector stores and LlamaIndex want flat metadata):

    segpress_original_tokens, segpress_compressed_tokens, segpress_segments
        the document's own counts
    segpress_cache_hits, segpress_cache_misses
        segments served from the cache / computed, for the whole request
    segpress_compressor
        the compressor that ran
    segpress_relevance, segpress_rank, segpress_kept
        for a request with a query, when the server's CompressedContext has
        such fields (query-aware selection)

A document the server's selection dropped (`kept` false for a request with a
query, when some other document is kept) is left out. Documents with no text (empty or only whitespace) are not
sent and come back unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .aio import AsyncSegpressClient
from .client import SegpressClient, SegpressError, soft_token_compressors

log = logging.getLogger("segpress.integration")

# Compressors that return soft tokens (embeddings), which no text interface can
# carry: those whose parameters in the .proto are soft-token ones.
SOFT_TOKEN_COMPRESSORS = soft_token_compressors()
ON_ERROR = ("raise", "passthrough")
# The request keywords an integration passes through, by attribute name.
OPTIONS = ("compressor", "rate", "target_tokens", "threshold", "granularity", "force_tokens",
           "force_reserve_digit", "drop_consecutive", "namespace", "cache")
METADATA_KEYS = ("segpress_original_tokens", "segpress_compressed_tokens", "segpress_segments",
                 "segpress_cache_hits", "segpress_cache_misses", "segpress_compressor",
                 "segpress_relevance", "segpress_rank", "segpress_kept")


@dataclass(frozen=True)
class Compressed:
    """The outcome for input text `index`: its compressed `text` and the
    segpress metadata to add, or metadata None when it was not sent (no
    text) and the document stays as it is."""

    index: int
    text: str
    metadata: dict[str, Any] | None


def request_options(obj: Any) -> dict[str, Any]:
    """The request keywords stored on an integration (attributes named as
    in OPTIONS, plus its `options` dict: other keywords of
    SegpressClient.request, such as the query-aware selection's), checked:
    soft-token compressors, keywords given twice or not for text, and a bad
    `on_error` raise ValueError."""
    options = {name: getattr(obj, name) for name in OPTIONS}
    options["force_tokens"] = list(options["force_tokens"] or ())
    extra = dict(obj.options or {})
    twice = sorted(extra.keys() & (set(options) | {"contexts", "query", "timeout_s"}))
    if twice:
        raise ValueError(f"options {twice}: pass these as the integration's own arguments "
                         "(the query comes from the framework)")
    soft = sorted(extra.keys() & {"output_dtype", "decoder"})
    if soft:
        raise ValueError(f"options {soft} are for soft-token compressors, which these text "
                         "integrations do not support")
    options.update(extra)
    if options["compressor"] in SOFT_TOKEN_COMPRESSORS:
        raise ValueError(
            f"compressor {options['compressor']!r} returns soft tokens (embeddings), which a "
            "document's text cannot carry; use a text compressor (llmlingua2) here, or "
            "SegpressClient with segpress.tensors for soft tokens")
    if obj.on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {obj.on_error!r}")
    return options


def check_options(obj: Any) -> None:
    """Raises ValueError now, when the integration is built, for what
    `request_options` or the client would refuse at the first call."""
    options = request_options(obj)
    try:
        SegpressClient.request(["-"], **options)
    except TypeError as e:  # an unknown keyword in `options`
        raise ValueError(f"options: {e}") from None


class Clients:
    """The clients an integration calls: the ones it was given, or ones made
    on first use from `target` and `client_options` (the async client once
    per event loop, since a grpc.aio channel belongs to the loop it was made
    in)."""

    def __init__(self, target: str | None, client: SegpressClient | None,
                 async_client: AsyncSegpressClient | None, client_options: dict[str, Any] | None):
        if target is None and client is None and async_client is None:
            raise ValueError("give the server's address (target='host:port'), a client or an async_client")
        self.target = target
        self.options = dict(client_options or {})
        self._client = client
        self._async_client = async_client
        self._given_sync = client is not None
        self._given_async = async_client is not None
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._lock = threading.Lock()

    def sync(self) -> SegpressClient:
        if self._client is None:
            if self.target is None:
                raise ValueError("this integration has only an async_client: call its async method, "
                                 "or give it client= or target=")
            with self._lock:
                if self._client is None:
                    self._client = SegpressClient(self.target, **self.options)
        return self._client

    def async_(self) -> AsyncSegpressClient | None:
        """The async client for the running loop; None when there is none
        and none can be made (only a blocking client was given)."""
        if self._given_async or self.target is None:
            return self._async_client
        loop = asyncio.get_running_loop()
        if self._loop is None or self._loop() is not loop:
            self._async_client = AsyncSegpressClient(self.target, **self.options)
            self._loop = weakref.ref(loop)
        return self._async_client

    def close(self) -> None:
        """Closes the blocking client if this object made it."""
        if self._client is not None and not self._given_sync:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Closes the async client of the running loop if this object made it."""
        if self._async_client is not None and not self._given_async:
            await self._async_client.close()
            self._async_client = None
            self._loop = None


def compress_texts(client: SegpressClient, texts: Sequence[str | None], query: str | None,
                   options: dict[str, Any], timeout_s: float | None, on_error: str) -> list[Compressed] | None:
    """Compresses `texts` in one request; None when the call failed and
    `on_error` is "passthrough" (the failure is logged)."""
    sent, query = _to_send(texts), _query(query)
    if not sent:
        return _unsent(texts)
    try:
        resp = client.compress([texts[i] for i in sent], query=query,  # type: ignore[misc]
                               timeout_s=timeout_s, **options)
    except SegpressError as e:
        return _failed(e, on_error, len(texts))
    return _results(texts, sent, resp, query is not None and bool(options.get("selection", True)))


async def acompress_texts(client: AsyncSegpressClient, texts: Sequence[str | None], query: str | None,
                          options: dict[str, Any], timeout_s: float | None,
                          on_error: str) -> list[Compressed] | None:
    """`compress_texts` on the async client."""
    sent, query = _to_send(texts), _query(query)
    if not sent:
        return _unsent(texts)
    try:
        resp = await client.compress([texts[i] for i in sent], query=query,  # type: ignore[misc]
                                     timeout_s=timeout_s, **options)
    except SegpressError as e:
        return _failed(e, on_error, len(texts))
    return _results(texts, sent, resp, query is not None and bool(options.get("selection", True)))


async def acompress_with(clients: Clients, texts: Sequence[str | None], query: str | None,
                         options: dict[str, Any], timeout_s: float | None,
                         on_error: str) -> list[Compressed] | None:
    """`acompress_texts` on the loop's async client, or `compress_texts` in a
    thread when only a blocking client was given."""
    aclient = clients.async_()
    if aclient is None:
        return await asyncio.to_thread(compress_texts, clients.sync(), texts, query, options,
                                       timeout_s, on_error)
    return await acompress_texts(aclient, texts, query, options, timeout_s, on_error)


def _to_send(texts: Sequence[str | None]) -> list[int]:
    return [i for i, t in enumerate(texts) if t and not t.isspace()]


def _query(query: str | None) -> str | None:
    """The query to send: none for an empty one (frameworks pass "" for none)."""
    return query if query and not query.isspace() else None


def _unsent(texts: Sequence[str | None]) -> list[Compressed]:
    return [Compressed(i, t or "", None) for i, t in enumerate(texts)]


def _failed(e: SegpressError, on_error: str, n: int) -> None:
    if on_error != "passthrough":
        raise e
    log.warning("segpress compression failed (%s: %s); passing %d documents through uncompressed",
                e.code.name, e.details, n)
    return None


def _results(texts: Sequence[str | None], sent: list[int], resp: Any, had_query: bool) -> list[Compressed]:
    """One Compressed per input text, in input order, less those selection dropped."""
    if resp.HasField("tensor"):
        raise ValueError(f"the server's compressor {resp.compressor!r} returned soft tokens, which a "
                         "document's text cannot carry; name a text compressor (compressor='llmlingua2')")
    out = _unsent(texts)
    dropped = set()
    stats = resp.stats
    # Selection ran when a context is marked kept; a server from before
    # selection leaves every `kept` false (proto3's default), and then
    # nothing is dropped or reported.
    selected = had_query and any(getattr(ctx, "kept", False) for ctx in resp.contexts)
    for i, ctx in zip(sent, resp.contexts, strict=True):
        meta = {
            "segpress_original_tokens": ctx.original_tokens,
            "segpress_compressed_tokens": ctx.compressed_tokens,
            "segpress_segments": ctx.segments,
            "segpress_cache_hits": stats.cache_hits,
            "segpress_cache_misses": stats.cache_misses,
            "segpress_compressor": resp.compressor,
            **(_selection(ctx) if selected else {}),
        }
        if meta.get("segpress_kept") is False:
            dropped.add(i)
        out[i] = Compressed(i, ctx.text, meta)
    return [c for c in out if c.index not in dropped]


def _selection(ctx: Any) -> dict[str, Any]:
    """relevance, rank and kept, when the server's CompressedContext has
    such fields (query-aware selection) and, for fields with presence, sets
    them. Read by name, so that this client works with servers from before
    and after selection."""
    fields = ctx.DESCRIPTOR.fields_by_name
    found = {}
    for name in ("relevance", "rank", "kept"):
        field = fields.get(name)
        if field is not None and (not field.has_presence or ctx.HasField(name)):
            found[f"segpress_{name}"] = getattr(ctx, name)
    return found

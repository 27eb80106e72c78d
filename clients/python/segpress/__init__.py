"""segpress client: compress long contexts with a segpress server.

    from segpress import SegpressClient

    with SegpressClient("localhost:50051") as client:
        resp = client.compress(["a long context ..."], rate=0.33)
        print(resp.text, resp.stats.ratio)

`AsyncSegpressClient` is the asyncio version; `segpress.tensors` converts
soft-token tensors to and from numpy (and torch, when installed).
`segpress.langchain`, `segpress.llamaindex` and `segpress.haystack` put the
client into those RAG frameworks; each imports its framework, this package
imports none.
"""

from .aio import AsyncSegpressClient
from .client import Retry, SegpressClient, SegpressError
from .v1 import segpress_pb2 as pb

__all__ = ["AsyncSegpressClient", "Retry", "SegpressClient", "SegpressError", "pb"]

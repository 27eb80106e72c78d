"""segpress client: compress long contexts with a segpress server.

    from segpress import SegpressClient

    with SegpressClient("localhost:50051") as client:
        resp = client.compress(["a long context ..."], rate=0.33)
        print(resp.text, resp.stats.ratio)
"""

from .client import SegpressClient, SegpressError
from .v1 import segpress_pb2 as pb

__all__ = ["SegpressClient", "SegpressError", "pb"]

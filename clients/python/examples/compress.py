"""Compresses a few retrieved chunks with a segpress server, blocking and
with asyncio.

    python clients/python/examples/compress.py --server 127.0.0.1:50051
    python clients/python/examples/compress.py --server HOST:PORT --ca ca.pem --token TOKEN
"""

import argparse
import asyncio

from segpress import AsyncSegpressClient, Retry, SegpressClient, SegpressError

CHUNKS = [
    "The lighthouse at Cape Ardmore was first lit on the evening of 14 March 1851.",
    "Its keeper, Thomas Wren, recorded that the lamp burned eleven pints of oil before dawn.",
]


def connection_options(args: argparse.Namespace) -> dict:
    """The options both clients take; a plaintext server needs none."""
    return dict(
        root_certificates=args.ca,  # CA of the server's certificate (PEM file or bytes): TLS
        client_cert=args.cert,      # with client_key: mutual TLS
        client_key=args.key,
        token=args.token,           # sent as "authorization: Bearer <token>"
        timeout_s=30,               # deadline of calls that pass no timeout_s
        retry=Retry(attempts=4),    # UNAVAILABLE only, exponential backoff with jitter
    )


def blocking(target: str, options: dict) -> None:
    with SegpressClient(target, **options) as client:
        resp = client.compress(
            CHUNKS,
            rate=0.33,                 # or target_tokens=300 (shared across contexts)
            force_tokens=["\n"],       # always kept
            request_id="q-42",
        )
        print(resp.text)               # contexts joined with a blank line
        print(resp.contexts[0].text)   # one entry per context
        s = resp.stats
        print(s.original_tokens, s.compressed_tokens, s.ratio, s.cache_hits, s.cache_misses)

        # Many requests on one stream: one result per request, in order,
        # each with its own status (here the empty one fails alone).
        requests = [SegpressClient.request(c, rate=0.5) for c in [CHUNKS[0], "", CHUNKS[1]]]
        for r in client.compress_stream(requests):
            print(r.index, r.status.code, r.status.message or r.response.text)

        try:
            client.compress([""])
        except SegpressError as e:
            print(e.code.name, e.details)  # INVALID_ARGUMENT contexts[0] is empty ...

        # RAG: pass the question. The most relevant sentences of the chunks
        # are kept (relevance from cached sentence embeddings and BM25), the
        # rest dropped; every context still has its entry.
        resp = client.compress(CHUNKS, query="Who kept the lighthouse?", rate=0.33)
        for c in resp.contexts:
            print(c.rank, round(c.relevance, 2), c.kept, c.text)
        print(resp.stats.cache_hits, resp.stats.sentence_vector_hits)  # another question: all hits


async def with_asyncio(target: str, options: dict) -> None:
    async with AsyncSegpressClient(target, **options) as client:
        info = await client.info()
        print(info.version, [c.name for c in info.compressors])
        resp = await client.compress(CHUNKS, target_tokens=20)
        print(resp.stats.compressed_tokens, resp.text)

        async def requests():  # any iterable or async iterable of requests
            for c in CHUNKS:
                yield AsyncSegpressClient.request(c, rate=0.5)

        async for r in client.compress_stream(requests()):
            print(r.index, r.status.code, r.response.text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:50051")
    ap.add_argument("--ca", help="PEM file of the CA that signed the server's certificate")
    ap.add_argument("--cert", help="client certificate (PEM), for mutual TLS")
    ap.add_argument("--key", help="client key (PEM), for mutual TLS")
    ap.add_argument("--token", help="auth token")
    args = ap.parse_args()
    options = connection_options(args)
    blocking(args.server, options)
    asyncio.run(with_asyncio(args.server, options))


if __name__ == "__main__":
    main()

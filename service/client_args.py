"""The flags of the client commands (`compress`, `info`, `batch`): how to
reach a --server, and what to ask of it."""

import argparse
import os


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    """Token and TLS flags, for a server started with --token/--tls-cert."""
    p.add_argument("--token", default=os.environ.get("SEGPRESS_TOKEN"),
                   help="bearer token (env SEGPRESS_TOKEN)")
    p.add_argument("--tls", action="store_true", help="TLS with the system's CAs")
    p.add_argument("--ca", help="PEM CA file that signed the server's certificate (implies --tls)")
    p.add_argument("--client-cert", help="PEM client certificate, for mutual TLS")
    p.add_argument("--client-key", help="PEM key of --client-cert")


def connect(args):
    """A SegpressClient for args.server with the flags above."""
    from segpress import SegpressClient

    return SegpressClient(args.server, tls=args.tls, root_certificates=args.ca,
                          client_cert=args.client_cert, client_key=args.client_key,
                          token=args.token)


def add_request_arguments(p: argparse.ArgumentParser) -> None:
    """The compression request's flags (see SegpressClient.request)."""
    p.add_argument("--compressor", default="", help="compressor name (default: the server's)")
    p.add_argument("--rate", type=float, help="fraction of tokens to keep, in (0, 1]")
    p.add_argument("--target-tokens", type=int, help="number of tokens to keep per text")
    p.add_argument("--threshold", type=float,
                   help="instead of a budget: keep what scores at least this, in [0, 1]")
    p.add_argument("--force-token", action="append", default=[], dest="force_tokens",
                   help="string to always keep (repeatable)")
    p.add_argument("--force-reserve-digit", action="store_true", help="keep words with digits")
    p.add_argument("--granularity", choices=["word", "sentence", "sentence_then_word"],
                   help="keep single words, whole sentences, or sentences then words "
                   "(default: sentences without --query, words with it)")
    p.add_argument("--query", help="question: turns on query-aware selection")
    p.add_argument("--no-selection", action="store_true",
                   help="with --query: do not select by relevance")
    p.add_argument("--keep-rate", type=float,
                   help="with --query: share of the tokens selection keeps, in (0, 1]")
    p.add_argument("--ranker", choices=["hybrid", "dense", "bm25"], help="with --query")
    p.add_argument("--order", choices=["original", "relevance"],
                   help="with --query: order of the contexts in the text")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="with --query: keep repeated sentences every time")
    p.add_argument("--min-relevance", type=float,
                   help="with --query: drop contexts less relevant than this, in [0, 1]")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="complm/arc: optimizer steps on each segment's rows at compress time "
                   "(slower once, then cached; better answers from the rows)")
    p.add_argument("--verbatim-names", action="store_true",
                   help="complm/arc: names pass as the decoder's own embeddings, as digits do "
                   "(more rows; better answers about people and places)")
    p.add_argument("--cache", default="use", choices=["use", "bypass", "refresh"])
    p.add_argument("--namespace", default="")


def request_options(args) -> dict:
    """SegpressClient.request keywords from the flags above."""
    return dict(query=args.query, selection=not args.no_selection, keep_rate=args.keep_rate,
                ranker=args.ranker, order=args.order, keep_duplicates=args.keep_duplicates,
                min_relevance=args.min_relevance,
                compressor=args.compressor, rate=args.rate, target_tokens=args.target_tokens,
                threshold=args.threshold, force_tokens=list(args.force_tokens),
                force_reserve_digit=args.force_reserve_digit, granularity=args.granularity,
                refine_steps=args.refine_steps, verbatim_names=args.verbatim_names, cache=args.cache, namespace=args.namespace)

"""How a client command (`compress`, `info`, `batch`) reaches a --server:
its flags, and the SegpressClient they describe."""

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
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

"""The segpress gRPC service: configuration, request flow, server and CLI."""

__version__ = "0.1.0"

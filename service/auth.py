"""Authentication and tenancy: bearer tokens, each mapped to a namespace.

Tokens come from `--auth-tokens` ("token=namespace,token2=namespace2") and/or
`--auth-tokens-file` (one "token namespace" pair per line, '#' comments).
With no tokens configured, authentication is off and requests choose their
namespace freely (a trusted network). With tokens, every Compress,
CompressStream and Info call needs `authorization: Bearer <token>` metadata;
the token's namespace is the request's namespace (a request may repeat it,
never name another), so one tenant's cache entries are never read, written
or probed by another.

Tokens are compared with hmac.compare_digest against every configured token,
so the time taken does not depend on which token (if any) matched.
"""

import hmac
from pathlib import Path

import grpc

from .errors import RequestError


class Authenticator:
    def __init__(self, tokens: dict[str, str]):
        self._tokens = [(t.encode(), ns) for t, ns in tokens.items()]

    @classmethod
    def from_config(cls, config) -> "Authenticator":
        tokens: dict[str, str] = {}
        for pair in filter(None, (p.strip() for p in config.auth_tokens.split(","))):
            token, sep, ns = pair.partition("=")
            if not sep or not token or not ns:
                raise SystemExit(f"--auth-tokens: expected token=namespace, got {pair[:8]!r}...")
            tokens[token] = ns
        if config.auth_tokens_file:
            for n, line in enumerate(Path(config.auth_tokens_file).read_text().splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) != 2:
                    raise SystemExit(f"{config.auth_tokens_file}:{n}: expected 'token namespace'")
                tokens[parts[0]] = parts[1]
        return cls(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def namespace(self, metadata) -> str | None:
        """The caller's namespace (None when auth is off), or RequestError."""
        if not self._tokens:
            return None
        header = next((v for k, v in (metadata or ()) if k == "authorization"), None)
        if header is None:
            raise RequestError(grpc.StatusCode.UNAUTHENTICATED,
                            "missing 'authorization: Bearer <token>' metadata")
        scheme, _, token = str(header).partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise RequestError(grpc.StatusCode.UNAUTHENTICATED,
                            "authorization metadata must be 'Bearer <token>'")
        given = token.strip().encode()
        found = None
        for known, ns in self._tokens:  # no early exit: constant time over tokens
            if hmac.compare_digest(given, known):
                found = ns
        if found is None:
            raise RequestError(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        return found


def check_namespace(requested: str, granted: str | None) -> str:
    """The namespace a request runs in."""
    if granted is None:
        return requested or "default"
    if requested and requested != granted:
        raise RequestError(grpc.StatusCode.PERMISSION_DENIED,
                        f"namespace {requested!r} is not this token's namespace; "
                        "leave namespace empty or set it to the token's")
    return granted

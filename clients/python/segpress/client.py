"""Typed wrappers over the generated gRPC stub.

`SegpressClient` blocks; `AsyncSegpressClient` (in `aio.py`) is its asyncio
twin. Both take the same connection options: plaintext by default, TLS with
`tls=True` or any certificate option, an auth token, a default deadline and
retries of unary calls that fail with UNAVAILABLE.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

import grpc

from .tensors import DTYPES
from .v1 import segpress_pb2 as pb
from .v1 import segpress_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from typing_extensions import Unpack

# PEM bytes, or the path of a PEM file.
Pem = bytes | str | os.PathLike[str]
T = TypeVar("T")

_CACHE_MODES = {
    "use": pb.CACHE_MODE_USE,
    "bypass": pb.CACHE_MODE_BYPASS,
    "refresh": pb.CACHE_MODE_REFRESH,
}


_GRANULARITIES = {
    "word": pb.GRANULARITY_WORD,
    "sentence": pb.GRANULARITY_SENTENCE,
    "sentence_then_word": pb.GRANULARITY_SENTENCE_THEN_WORD,
}
_RANKERS = {"hybrid": pb.RANKER_HYBRID, "dense": pb.RANKER_DENSE, "bm25": pb.RANKER_BM25}
_ORDERS = {"original": pb.ORDER_ORIGINAL, "relevance": pb.ORDER_RELEVANCE}


class SegpressError(Exception):
    """A failed call; `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, e: grpc.RpcError) -> SegpressError:
        return cls(e.code(), e.details() or "")


@dataclass(frozen=True)
class Retry:
    """How unary calls are retried when they fail with UNAVAILABLE (server
    overloaded, restarting or not reachable yet); other codes never are.

    At most `attempts` tries in all (1 disables retries). Before retry n
    (from 0) the client sleeps a random time in [0, min(max_backoff_s,
    initial_backoff_s * multiplier**n)] ("full jitter"), and gives up early
    when that sleep would pass the call's deadline. Streams are not retried.
    """

    attempts: int = 3
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"Retry.attempts must be >= 1, got {self.attempts}")

    def delay_s(self, error: grpc.RpcError, attempt: int, deadline: float) -> float | None:
        """Seconds to sleep before retrying after try number `attempt` (from
        1) failed with `error`, or None to give up."""
        if error.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self.attempts:
            return None
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        delay = random.uniform(0, cap)
        return delay if time.monotonic() + delay < deadline else None


class CompressOptions(TypedDict, total=False):
    """Keywords of `compress()`; see `SegpressClient.request()`."""

    query: str | None
    selection: bool
    keep_rate: float | None
    ranker: str | None
    order: str | None
    keep_duplicates: bool
    min_relevance: float | None
    compressor: str
    rate: float | None
    target_tokens: int | None
    force_tokens: Sequence[str]
    force_reserve_digit: bool
    drop_consecutive: bool
    granularity: str | None
    threshold: float | None
    output_dtype: str | None
    decoder: str
    pooling_factor: int | None
    refine_steps: int
    verbatim_names: bool
    cache: str
    namespace: str
    request_id: str


def _read_pem(pem: Pem | None) -> bytes | None:
    if pem is None or isinstance(pem, bytes):
        return pem
    with open(pem, "rb") as f:
        return f.read()


class _ClientBase:
    """Connection settings and request building shared by both clients;
    `_grpc` is the module whose channels a subclass uses (grpc or grpc.aio)."""

    _grpc: Any = grpc
    _stub: Any

    def __init__(
        self,
        target: str,
        timeout_s: float = 60.0,
        max_message_bytes: int = 64 << 20,
        *,
        tls: bool = False,
        root_certificates: Pem | None = None,
        client_cert: Pem | None = None,
        client_key: Pem | None = None,
        token: str | None = None,
        retry: Retry = Retry(),
    ):
        """Connects to `target` ("host:port"). Plaintext unless `tls` is set
        or a certificate is given: `root_certificates` are the CAs trusted to
        sign the server's certificate (default: the system's), and
        `client_cert` with `client_key` authenticate this client (mutual TLS).
        Each is PEM bytes or a file path. `token` is sent as
        `authorization: Bearer <token>` metadata on every call. `timeout_s`
        is the deadline of unary calls that pass none (streams have none
        unless given); `retry` says how UNAVAILABLE is retried."""
        if (client_cert is None) != (client_key is None):
            raise ValueError("client_cert and client_key must be given together")
        self.timeout_s = timeout_s
        self.retry = retry
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls or root_certificates is not None or client_cert is not None:
            credentials = grpc.ssl_channel_credentials(
                _read_pem(root_certificates), _read_pem(client_key), _read_pem(client_cert))
            self._channel = self._grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = self._grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.SegpressStub(self._channel)

    @staticmethod
    def request(
        contexts: Sequence[str] | str,
        *,
        query: str | None = None,
        selection: bool = True,
        keep_rate: float | None = None,
        ranker: str | None = None,
        order: str | None = None,
        keep_duplicates: bool = False,
        min_relevance: float | None = None,
        compressor: str = "",
        rate: float | None = None,
        target_tokens: int | None = None,
        force_tokens: Sequence[str] = (),
        force_reserve_digit: bool = False,
        drop_consecutive: bool = False,
        granularity: str | None = None,
        threshold: float | None = None,
        output_dtype: str | None = None,
        decoder: str = "",
        pooling_factor: int | None = None,
        refine_steps: int = 0,
        verbatim_names: bool = False,
        cache: str = "use",
        namespace: str = "",
        request_id: str = "",
    ) -> pb.CompressRequest:
        """Builds a CompressRequest from keyword arguments.

        query turns on query-aware selection; selection=False turns it off
        again, and keep_rate, ranker ("hybrid", "dense" or "bm25"), order
        ("original" or "relevance"), keep_duplicates and min_relevance tune
        it (see SelectionOptions in the .proto).
        rate, target_tokens, threshold (keep what scores at least it,
        instead of a budget), force_tokens, force_reserve_digit,
        drop_consecutive and granularity ("word", "sentence" or "sentence_then_word") are llmlingua2
        parameters; output_dtype ("float32",
        "float16" or "bfloat16") and decoder (the decoder id or fingerprint
        the soft tokens are for) are the soft-token compressors' (complm's,
        or arc's with compressor="arc"); refine_steps (optimizer steps on
        each segment's rows at compress time: slower once, then cached,
        better answers; see CompLLMParams.refine_steps) is complm's,
        pooling_factor (tokens per row) arc's, and verbatim_names (names
        pass as the decoder's own embeddings, as digits do: more rows,
        better answers about people and places) both's. Setting text and
        soft-token parameters together is an error."""
        if isinstance(contexts, str):
            contexts = [contexts]
        if cache not in _CACHE_MODES:
            raise ValueError(f"cache must be one of {sorted(_CACHE_MODES)}, got {cache!r}")
        req = pb.CompressRequest(
            contexts=list(contexts), compressor=compressor,
            cache_mode=_CACHE_MODES[cache], namespace=namespace, request_id=request_id,
        )
        if query is not None:
            req.query = query
        if ranker is not None and ranker not in _RANKERS:
            raise ValueError(f"ranker must be one of {sorted(_RANKERS)}, got {ranker!r}")
        if order is not None and order not in _ORDERS:
            raise ValueError(f"order must be one of {sorted(_ORDERS)}, got {order!r}")
        if (not selection or keep_rate is not None or ranker or order or keep_duplicates
                or min_relevance is not None):
            sel = req.selection
            sel.disabled = not selection
            if keep_rate is not None:
                sel.keep_rate = keep_rate
            sel.ranker = _RANKERS[ranker] if ranker else pb.RANKER_UNSPECIFIED
            sel.order = _ORDERS[order] if order else pb.ORDER_UNSPECIFIED
            sel.keep_duplicates = keep_duplicates
            if min_relevance is not None:
                sel.min_relevance = min_relevance
        if rate is not None or target_tokens is not None or threshold is not None or force_tokens \
                or force_reserve_digit or drop_consecutive or granularity is not None:
            params = req.llmlingua2
            if rate is not None:
                params.rate = rate
            if target_tokens is not None:
                params.target_tokens = target_tokens
            if threshold is not None:
                params.threshold = threshold
            params.force_tokens.extend(force_tokens)
            params.force_reserve_digit = force_reserve_digit
            params.drop_consecutive = drop_consecutive
            if granularity is not None:
                if granularity not in _GRANULARITIES:
                    raise ValueError(f"granularity must be one of {sorted(_GRANULARITIES)}, "
                                     f"got {granularity!r}")
                params.granularity = _GRANULARITIES[granularity]
        if output_dtype is not None or decoder or pooling_factor is not None or refine_steps \
                or verbatim_names:
            if req.HasField("llmlingua2"):
                raise ValueError("output_dtype, decoder, pooling_factor, refine_steps and verbatim_names "
                                 "(soft-token compressors) cannot be combined with llmlingua2 parameters")
            if output_dtype is not None and output_dtype not in DTYPES:
                raise ValueError(f"output_dtype must be one of {sorted(DTYPES)}, got {output_dtype!r}")
            named = [n for n, v in (("pooling_factor", pooling_factor is not None),
                                    ("refine_steps", refine_steps)) if v]
            soft = getattr(req, soft_params_case(compressor, named))
            if pooling_factor is not None:
                soft.pooling_factor = pooling_factor
            soft.output_dtype = DTYPES[output_dtype or "float32"]
            soft.decoder = decoder
            if refine_steps:
                soft.refine_steps = refine_steps
            soft.verbatim_names = verbatim_names
        return req


def soft_params_case(compressor: str, named: list[str]) -> str:
    """The CompressRequest.params case for soft-token parameters: the one
    named like `compressor`, or with no compressor named the first soft-token
    case that has every field in `named` (e.g. pooling_factor). Read from the
    .proto: a case is a soft-token compressor's when its message has
    output_dtype."""
    cases = [f for f in pb.CompressRequest.DESCRIPTOR.oneofs_by_name["params"].fields
             if "output_dtype" in f.message_type.fields_by_name
             and all(n in f.message_type.fields_by_name for n in named)]
    for f in cases:
        if f.name == compressor or not compressor:
            return f.name
    raise ValueError(f"output_dtype, decoder{''.join(f', {n}' for n in named)} are not parameters "
                     f"of compressor {compressor!r}; they are of {[f.name for f in cases]}")


def soft_token_compressors() -> frozenset[str]:
    """The compressors whose parameters (in the .proto) are soft-token ones."""
    return frozenset(f.name for f in pb.CompressRequest.DESCRIPTOR.oneofs_by_name["params"].fields
                     if "output_dtype" in f.message_type.fields_by_name)


class SegpressClient(_ClientBase):
    """Blocking client; see `_ClientBase.__init__` for the options."""

    _channel: grpc.Channel
    _stub: pb_grpc.SegpressStub

    def __enter__(self) -> SegpressClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def compress(
        self, contexts: Sequence[str] | str, *, timeout_s: float | None = None,
        **options: Unpack[CompressOptions],
    ) -> pb.CompressResponse:
        """Compresses `contexts` (one string or a list); `options` are the
        keywords of `request()`. Raises SegpressError."""
        return self._call(self._stub.Compress, self.request(contexts, **options), timeout_s)

    def compress_stream(
        self, requests: Iterable[pb.CompressRequest], timeout_s: float | None = None
    ) -> Iterator[pb.CompressStreamResponse]:
        """Sends `requests` (see `request()`) on one stream; yields a result per
        request, in order, each with its own status."""
        responses = self._stub.CompressStream(
            iter(requests), timeout=timeout_s, metadata=self._metadata)
        try:
            yield from responses
        except grpc.RpcError as e:
            raise SegpressError.from_rpc(e) from None
        finally:
            responses.cancel()  # a no-op once the stream is done; ends it if the caller stopped early

    def info(self, timeout_s: float | None = None) -> pb.InfoResponse:
        """Describes the server: version, compressors, models and limits."""
        return self._call(self._stub.Info, pb.InfoRequest(), timeout_s)

    def _call(self, method: Callable[..., T], req: Any, timeout_s: float | None) -> T:
        """One unary call with the client's metadata and deadline, retried
        on UNAVAILABLE; raises SegpressError."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        attempt = 1
        while True:
            try:
                return method(req, timeout=deadline - time.monotonic(), metadata=self._metadata)
            except grpc.RpcError as e:
                delay = self.retry.delay_s(e, attempt, deadline)
                if delay is None:
                    raise SegpressError.from_rpc(e) from None
            time.sleep(delay)
            attempt += 1

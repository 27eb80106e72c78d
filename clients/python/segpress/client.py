"""A thin, typed wrapper over the generated gRPC stub."""

from collections.abc import Iterable, Iterator, Sequence

import grpc

from .v1 import segpress_pb2 as pb
from .v1 import segpress_pb2_grpc as pb_grpc

_CACHE_MODES = {
    "use": pb.CACHE_MODE_USE,
    "bypass": pb.CACHE_MODE_BYPASS,
    "refresh": pb.CACHE_MODE_REFRESH,
}


class SegpressError(Exception):
    """A failed call; `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class SegpressClient:
    """Synchronous client. `target` is "host:port"."""

    def __init__(self, target: str, timeout_s: float = 60.0, max_message_bytes: int = 64 << 20):
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ])
        self._stub = pb_grpc.SegpressStub(self._channel)

    def __enter__(self) -> "SegpressClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def compress(
        self,
        contexts: Sequence[str] | str,
        *,
        query: str | None = None,
        compressor: str = "",
        rate: float | None = None,
        target_tokens: int | None = None,
        force_tokens: Sequence[str] = (),
        force_reserve_digit: bool = False,
        drop_consecutive: bool = False,
        cache: str = "use",
        namespace: str = "",
        request_id: str = "",
        timeout_s: float | None = None,
    ) -> pb.CompressResponse:
        """Compresses `contexts` (one string or a list); raises SegpressError."""
        req = self.request(
            contexts, query=query, compressor=compressor, rate=rate,
            target_tokens=target_tokens, force_tokens=force_tokens,
            force_reserve_digit=force_reserve_digit, drop_consecutive=drop_consecutive,
            cache=cache, namespace=namespace, request_id=request_id,
        )
        return self._call(self._stub.Compress, req, timeout_s)

    def compress_stream(
        self, requests: Iterable[pb.CompressRequest], timeout_s: float | None = None
    ) -> Iterator[pb.CompressStreamResponse]:
        """Sends `requests` (see `request()`) on one stream; yields a result per
        request, in order, each with its own status."""
        try:
            yield from self._stub.CompressStream(iter(requests), timeout=timeout_s)
        except grpc.RpcError as e:
            raise SegpressError(e.code(), e.details()) from None

    def info(self, timeout_s: float | None = None) -> pb.InfoResponse:
        return self._call(self._stub.Info, pb.InfoRequest(), timeout_s)

    @staticmethod
    def request(
        contexts: Sequence[str] | str,
        *,
        query: str | None = None,
        compressor: str = "",
        rate: float | None = None,
        target_tokens: int | None = None,
        force_tokens: Sequence[str] = (),
        force_reserve_digit: bool = False,
        drop_consecutive: bool = False,
        cache: str = "use",
        namespace: str = "",
        request_id: str = "",
    ) -> pb.CompressRequest:
        """Builds a CompressRequest from keyword arguments."""
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
        if rate is not None or target_tokens is not None or force_tokens \
                or force_reserve_digit or drop_consecutive:
            params = req.llmlingua2
            if rate is not None:
                params.rate = rate
            if target_tokens is not None:
                params.target_tokens = target_tokens
            params.force_tokens.extend(force_tokens)
            params.force_reserve_digit = force_reserve_digit
            params.drop_consecutive = drop_consecutive
        return req

    def _call(self, method, req, timeout_s):
        try:
            return method(req, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            raise SegpressError(e.code(), e.details()) from None

"""The asyncio client, over grpc.aio; the same options as SegpressClient.

    async with AsyncSegpressClient("127.0.0.1:50051") as client:
        resp = await client.compress(["a long context ..."], rate=0.33)

Create it inside a running event loop and use it from that loop only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from .client import CompressOptions, SegpressError, T, _ClientBase
from .v1 import segpress_pb2 as pb
from .v1 import segpress_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from typing_extensions import Unpack


class AsyncSegpressClient(_ClientBase):
    """Asyncio client; see `_ClientBase.__init__` for the options."""

    _grpc = grpc.aio
    _channel: grpc.aio.Channel
    _stub: pb_grpc.SegpressAsyncStub

    async def __aenter__(self) -> AsyncSegpressClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def compress(
        self, contexts: Sequence[str] | str, *, timeout_s: float | None = None,
        **options: Unpack[CompressOptions],
    ) -> pb.CompressResponse:
        """Compresses `contexts` (one string or a list); `options` are the
        keywords of `request()`. Raises SegpressError."""
        return await self._call(self._stub.Compress, self.request(contexts, **options), timeout_s)

    async def compress_stream(
        self,
        requests: Iterable[pb.CompressRequest] | AsyncIterable[pb.CompressRequest],
        timeout_s: float | None = None,
    ) -> AsyncIterator[pb.CompressStreamResponse]:
        """Sends `requests` (see `request()`; a plain or an async iterable) on
        one stream; yields a result per request, in order, each with its own
        status."""
        it = aiter(requests) if isinstance(requests, AsyncIterable) else iter(requests)
        call = self._stub.CompressStream(it, timeout=timeout_s, metadata=self._metadata)
        try:
            async for resp in call:
                yield resp
        except grpc.RpcError as e:
            raise SegpressError.from_rpc(e) from None
        finally:
            call.cancel()  # a no-op once the stream is done; ends it if the caller stopped early

    async def info(self, timeout_s: float | None = None) -> pb.InfoResponse:
        """Describes the server: version, compressors, models and limits."""
        return await self._call(self._stub.Info, pb.InfoRequest(), timeout_s)

    async def _call(self, method: Callable[..., Awaitable[T]], req: Any, timeout_s: float | None) -> T:
        """One unary call with the client's metadata and deadline, retried
        on UNAVAILABLE; raises SegpressError."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        attempt = 1
        while True:
            try:
                return await method(req, timeout=deadline - time.monotonic(), metadata=self._metadata)
            except grpc.RpcError as e:
                delay = self.retry.delay_s(e, attempt, deadline)
                if delay is None:
                    raise SegpressError.from_rpc(e) from None
            await asyncio.sleep(delay)
            attempt += 1

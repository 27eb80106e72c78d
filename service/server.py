"""The gRPC server: the Segpress service, health, reflection, shutdown.

Errors a request causes become their gRPC status (see pipeline.RequestError);
anything unexpected is logged with the request id and answered INTERNAL, and
the server keeps serving.
"""

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cache.embedded import start_embedded
from cache.store import SegmentStore, connect
from compressors.registry import build_all
from segpress.v1 import segpress_pb2 as pb
from segpress.v1 import segpress_pb2_grpc as pb_grpc

from .config import Config
from .pipeline import Pipeline, RequestError

log = logging.getLogger("segpress.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segpress"].full_name


class SegpressServicer(pb_grpc.SegpressServicer):
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    async def Compress(self, request, context):
        try:
            return await self.pipeline.compress(request)
        except RequestError as e:
            await context.abort(e.code, e.message)
        except Exception:  # noqa: BLE001 - never take the server down
            log.exception("request %r failed", request.request_id)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see server log")

    async def CompressStream(self, request_iterator, context):
        # Up to `stream_window` requests run at once; results go out in order.
        pending: asyncio.Queue = asyncio.Queue(maxsize=self.pipeline.config.stream_window)

        async def read():
            try:
                async for req in request_iterator:
                    await pending.put(asyncio.ensure_future(self._one(req)))
            finally:
                await pending.put(None)

        reader = asyncio.ensure_future(read())
        index = 0
        try:
            while (task := await pending.get()) is not None:
                code, message, resp = await task
                item = pb.CompressStreamResponse(
                    index=index, status=pb.ItemStatus(code=code, message=message))
                if resp is not None:
                    item.response.CopyFrom(resp)
                index += 1
                yield item
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()

    async def _one(self, req):
        try:
            return 0, "", await self.pipeline.compress(req)
        except RequestError as e:
            return e.code.value[0], e.message, None
        except Exception:  # noqa: BLE001
            log.exception("stream item %r failed", req.request_id)
            return grpc.StatusCode.INTERNAL.value[0], "internal error; see server log", None

    async def Info(self, request, context):
        return self.pipeline.info()


async def make_store(config: Config):
    """The segment store, and the embedded Redis handle when one was started."""
    embedded = None
    url = config.redis_url
    if not url:
        embedded, url = start_embedded(config.cache_dir)
        log.info("started embedded Redis at %s", url)
    client = connect(url, config.cache_timeout_s)
    return SegmentStore(client, config.cache_ttl_s, config.cache_timeout_s, config.cache_retry_s), embedded


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    """Runs the server until SIGTERM or SIGINT."""
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    compressors = build_all(config)
    store, embedded = await make_store(config)
    pipeline = Pipeline(config, compressors, store)

    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_SegpressServicer_to_server(SegpressServicer(pipeline), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("segpress listening on %s:%d", config.host, port)
    for name, c in compressors.items():
        log.info("compressor %s: model %s fingerprint %s", name, c.model_id, c.fingerprint[:16])

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()

    # Graceful shutdown: report NOT_SERVING first so load balancers stop
    # sending, then let in-flight requests finish within the grace period.
    log.info("shutting down: health NOT_SERVING, %.0fs grace", config.grace_s)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(config.grace_s)
    await store.close()
    pipeline.close()
    if embedded is not None:
        embedded.shutdown()
    log.info("stopped")

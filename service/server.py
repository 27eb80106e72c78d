"""The gRPC server: the Segpress service, health, reflection, shutdown.

Every call goes through `_guard`: authentication (service.auth), the
in-progress limit (`--max-in-progress`: more requests than that at once are
refused with UNAVAILABLE so clients back off instead of piling up; the
pipeline bounds those waiting for the model by `--max-queue`), metrics and
one structured log line. Errors a request causes become their gRPC status
(RequestError); anything unexpected is logged with the request id and
answered INTERNAL, and the server keeps serving.

Streams: an open CompressStream is not work in progress, each of its
requests is while it runs (and gets UNAVAILABLE as its status over
--max-in-progress or --max-queue). A client may hold --max-streams-per-client streams at once; a
stream that sends nothing for --stream-idle-s while none of its requests is
in progress is ended; when a stream ends (the client cancelled, the deadline
passed) every request of it still queued or running is cancelled.

With auth on, server reflection needs a token too (ReflectionAuth); health
stays open for load balancers.
"""

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from segpress.v1 import segpress_pb2 as pb
from segpress.v1 import segpress_pb2_grpc as pb_grpc

from . import memory, metrics
from .auth import Authenticator
from .assemble import open_pipeline
from .config import Config
from .errors import RequestError, Undecodable
from .pipeline import Pipeline

log = logging.getLogger("segpress.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segpress"].full_name
# How long NOT_SERVING is reported before the server may stop (at most the
# grace period): long enough for health Watch streams to send it.
NOT_SERVING_S = 0.5


class SegpressServicer(pb_grpc.SegpressServicer):
    def __init__(self, pipeline: Pipeline, auth: Authenticator):
        self.pipeline = pipeline
        self.auth = auth
        self.in_progress = 0
        self.streams: dict[str, int] = {}  # client -> CompressStream calls open

    @contextlib.asynccontextmanager
    async def _guard(self, method: str, context, request_id: str = "", counts: bool = True):
        """Auth, the in-progress limit (when the call `counts` as work in
        progress: not a stream, whose requests count one by one), metrics and
        the access log of one call; yields the caller's namespace (None when
        auth is off)."""
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        self.in_progress += counts
        metrics.IN_PROGRESS.set(self.in_progress)
        try:
            namespace = self.auth.namespace(context.invocation_metadata())
            if counts:
                self._check_queue()
            yield namespace
        except RequestError as e:
            code = e.code
            await context.abort(e.code, e.message)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:  # noqa: BLE001 - never take the server down
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method, extra={"request_id": request_id})
            await context.abort(code, "internal error; see the server log")
        finally:
            self.in_progress -= counts
            metrics.IN_PROGRESS.set(self.in_progress)
            elapsed = time.perf_counter() - t0
            metrics.REQUESTS.labels(method, code.name).inc()
            metrics.LATENCY.labels(method).observe(elapsed)
            log.info("%s %s %.1fms", method, code.name, elapsed * 1000,
                     extra={"request_id": request_id, "method": method, "code": code.name,
                            "ms": round(elapsed * 1000, 2)})

    async def Compress(self, request, context):
        async with self._guard("Compress", context, request.request_id) as namespace:
            left = context.time_remaining()
            if left is not None and left <= 0:  # nobody waits for the answer: do no work
                raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "the call's deadline passed before the server started on it; "
                                   "give the call more time (timeout_s)")
            return await self.pipeline.compress(request, namespace)

    def _check_queue(self) -> None:
        limit = self.pipeline.config.max_in_progress
        if self.in_progress > limit:
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               f"server overloaded: more than max_in_progress={limit} "
                               "requests in progress; retry with backoff")

    async def CompressStream(self, request_iterator, context):
        # Up to `stream_window` requests run at once; results go out in order.
        async with self._guard("CompressStream", context, counts=False) as namespace:
            with self._stream_slot(_client(context, self.auth.enabled)):
                async for item in self._stream(request_iterator, namespace):
                    yield item

    @contextlib.contextmanager
    def _stream_slot(self, client: str):
        """One of the client's max_streams_per_client streams, for the call."""
        limit = self.pipeline.config.max_streams_per_client
        if self.streams.get(client, 0) >= limit:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"this client already has {limit} CompressStream calls open; the "
                               f"limit is max_streams_per_client={limit}: send more requests "
                               "on the open streams, or close one first")
        self.streams[client] = self.streams.get(client, 0) + 1
        try:
            yield
        finally:
            self.streams[client] -= 1
            if not self.streams[client]:
                del self.streams[client]

    async def _stream(self, request_iterator, namespace):
        """The results of a stream's requests, in order, each computed as a
        task of its own (up to stream_window at once). When the stream ends
        early (cancelled, deadline, idle) every task still queued or running
        is cancelled with it."""
        cfg = self.pipeline.config
        window = asyncio.Semaphore(cfg.stream_window)
        results: asyncio.Queue = asyncio.Queue()  # tasks in request order, then None or an error
        tasks: set[asyncio.Future] = set()

        async def read():
            try:
                async for req in _messages(request_iterator, tasks, cfg.stream_idle_s):
                    await window.acquire()
                    task = asyncio.ensure_future(self._one(req, namespace))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    results.put_nowait(task)
                results.put_nowait(None)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a broken or idle request stream
                results.put_nowait(e)

        reader = asyncio.ensure_future(read())
        index = 0
        try:
            while (task := await results.get()) is not None:
                if isinstance(task, Exception):
                    raise task
                code, message, resp = await task
                window.release()
                item = pb.CompressStreamResponse(
                    index=index, status=pb.ItemStatus(code=code, message=message))
                if resp is not None:
                    item.response.CopyFrom(resp)
                index += 1
                yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _one(self, req, namespace):
        """One request of a stream: (code, message, response or None). It is
        work in progress while it runs, refused with UNAVAILABLE over
        max_in_progress (and, waiting for the model, over max_queue)."""
        self.in_progress += 1
        metrics.IN_PROGRESS.set(self.in_progress)
        try:
            self._check_queue()
            return 0, "", await self.pipeline.compress(req, namespace)
        except RequestError as e:
            return e.code.value[0], e.message, None
        except Exception:  # noqa: BLE001
            log.exception("stream item failed", extra={"request_id": req.request_id})
            return grpc.StatusCode.INTERNAL.value[0], "internal error; see the server log", None
        finally:
            self.in_progress -= 1
            metrics.IN_PROGRESS.set(self.in_progress)

    async def Info(self, request, context):
        async with self._guard("Info", context):
            if isinstance(request, Undecodable):
                raise request.error()
            resp = self.pipeline.info()
            cfg = self.pipeline.config
            resp.limits.stream_idle_s = cfg.stream_idle_s
            resp.limits.max_streams_per_client = cfg.max_streams_per_client
            return resp


async def _messages(request_iterator, in_progress: set, idle_s: float):
    """The stream's requests as they arrive; RequestError DEADLINE_EXCEEDED
    when none arrives for `idle_s` seconds while `in_progress` is empty."""
    it = request_iterator.__aiter__()
    while True:
        nxt = asyncio.ensure_future(it.__anext__())
        try:
            while not (await asyncio.wait({nxt}, timeout=idle_s))[0]:
                if not in_progress:
                    raise RequestError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"the stream sent no request for {idle_s:g} s with none in progress; "
                        f"the limit is stream_idle_s={idle_s:g}: open a stream when there "
                        "are requests to send")
        finally:
            if not nxt.done():
                nxt.cancel()
        try:
            yield nxt.result()
        except StopAsyncIteration:
            return


def _client(context, auth_enabled: bool) -> str:
    """Who a call is from, for per-client limits: its token (hashed) when
    auth is on, else its address without the port."""
    if auth_enabled:
        header = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), "")
        return "token:" + hashlib.sha256(str(header).encode()).hexdigest()[:16]
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


class ReflectionAuth(grpc.aio.ServerInterceptor):
    """With auth on, server reflection answers only calls with a valid token
    (UNAUTHENTICATED otherwise); every other service is left to its handler."""

    def __init__(self, auth: Authenticator):
        self.auth = auth

    async def intercept_service(self, continuation, details):
        if self.auth.enabled and details.method.startswith("/grpc.reflection."):
            try:
                self.auth.namespace(details.invocation_metadata)
            except RequestError as e:
                async def refuse(request_iterator, context, e=e):
                    await context.abort(e.code, e.message)

                return grpc.stream_stream_rpc_method_handler(refuse)
        return await continuation(details)


def _parser(message_class):
    """A request deserializer that hands bad bytes to the servicer as
    Undecodable instead of failing the call with INTERNAL."""
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except DecodeError:
            return Undecodable(message_class.DESCRIPTOR.full_name)
    return parse


def add_service(servicer: SegpressServicer, server) -> None:
    """Registers the service like the generated add_SegpressServicer_to_server,
    with lenient request parsing."""
    handlers = {
        "Compress": grpc.unary_unary_rpc_method_handler(
            servicer.Compress, request_deserializer=_parser(pb.CompressRequest),
            response_serializer=pb.CompressResponse.SerializeToString),
        "CompressStream": grpc.stream_stream_rpc_method_handler(
            servicer.CompressStream, request_deserializer=_parser(pb.CompressRequest),
            response_serializer=pb.CompressStreamResponse.SerializeToString),
        "Info": grpc.unary_unary_rpc_method_handler(
            servicer.Info, request_deserializer=_parser(pb.InfoRequest),
            response_serializer=pb.InfoResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _credentials(config: Config):
    """TLS server credentials, or None for plaintext."""
    if not config.tls_cert:
        if config.tls_client_ca:
            raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not config.tls_key:
        raise SystemExit("--tls-cert needs --tls-key")
    ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
        root_certificates=ca, require_client_auth=ca is not None,
    )


@dataclass
class Running:
    """A started server: what serve() and in-process tests hold on to."""

    server: grpc.aio.Server
    servicer: SegpressServicer
    health: health.aio.HealthServicer
    port: int
    http: object = None  # service.http.HttpServer when --http-port is set


async def start(config: Config, pipeline: Pipeline, auth: Authenticator, credentials=None) -> Running:
    """The gRPC server for `pipeline` on config.host:config.port (0: a free
    port), started and reporting SERVING: the Segpress service with `auth`,
    TLS `credentials` (None: plaintext) and config's message limits, health
    and reflection."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
    ]
    server = grpc.aio.server(options=options, interceptors=[ReflectionAuth(auth)])
    servicer = SegpressServicer(pipeline, auth)
    add_service(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{config.host}:{config.port}"
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    await server.start()
    http = None
    if config.http_port:  # the HTTP/JSON API on the same loop, calling the same servicer
        from .http import HttpServer, make_app

        http = HttpServer(make_app(servicer, health_servicer), config.host, config.http_port, config)
        await http.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return Running(server, servicer, health_servicer, port, http)


async def serve(config: Config) -> None:
    """Runs the server until SIGTERM or SIGINT."""
    memory.limit_arenas(config.malloc_arena_max)  # before the pools start their threads
    auth = Authenticator.from_config(config)
    credentials = _credentials(config)
    pipeline, close_pipeline = await open_pipeline(config)
    metrics.serve_metrics(config.host, config.metrics_port)
    running = await start(config, pipeline, auth, credentials)
    servicer, health_servicer, server = running.servicer, running.health, running.server
    log.info("segpress listening on %s:%d (%s, auth %s, metrics port %s, HTTP port %s)",
             config.host, running.port, "TLS" if credentials else "plaintext",
             "on" if auth.enabled else "off", config.metrics_port or "off",
             running.http.port if running.http else "off")
    for name, c in pipeline.compressors.items():
        log.info("compressor %s: model %s fingerprint %s dtype %s", name, c.model_id,
                 c.fingerprint[:16], c.dtype)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    # Graceful shutdown: report NOT_SERVING first so load balancers stop
    # sending, refuse new calls, let in-flight requests finish within the
    # grace period, then end what is left (such as health Watch streams,
    # which would otherwise hold the server for the whole grace period).
    log.info("shutting down: health NOT_SERVING, %.0fs grace", config.grace_s)
    await health_servicer.enter_graceful_shutdown()
    # Let health Watch streams deliver NOT_SERVING before calls may end
    # (with nothing in flight, stop(0) below would otherwise cut them first).
    await asyncio.sleep(min(NOT_SERVING_S, config.grace_s))
    stopping = asyncio.ensure_future(server.stop(config.grace_s))
    http_stopping = asyncio.ensure_future(running.http.stop() if running.http else asyncio.sleep(0))
    deadline = loop.time() + config.grace_s
    while servicer.in_progress and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await server.stop(0)
    await stopping
    await http_stopping
    await close_pipeline()
    log.info("stopped")

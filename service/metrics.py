"""Prometheus metrics, served on a side HTTP port (--metrics-port)."""

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("segpress_requests_total", "Finished requests", ["method", "code"])
LATENCY = Histogram("segpress_request_seconds", "Request latency", ["method"],
                    buckets=_LATENCY_BUCKETS)
STAGE = Histogram("segpress_stage_seconds", "Time per request stage", ["stage"],
                  buckets=_LATENCY_BUCKETS)
CACHE = Counter("segpress_cache_segments_total", "Segments by cache outcome",
                ["outcome"])  # hit, miss
LOCAL_CACHE = Counter("segpress_local_cache_total", "In-process LRU lookups (--segment-cache-mb, "
                      "--local-cache-mb)", ["cache", "outcome"])  # segments|words|values, hit|miss
CACHE_ERRORS = Counter("segpress_cache_errors_total", "Failed cache operations")
CACHE_REJECTED = Counter("segpress_cache_rejected_total", "Cached values whose HMAC tag failed "
                         "(--cache-secret): treated as misses and overwritten")
LEASES = Counter("segpress_cache_leases_total", "Missing segments by cross-replica lease outcome "
                 "(--cache-lease-s)", ["outcome"])
# won: computed here; waited: another replica's value arrived; expired: its lease ended with
# no value, computed here; found: written just before the lease; local: already being
# computed in this process; error: Redis failed, computed here
TOKENS = Counter("segpress_tokens_total", "Tokens in and out", ["direction"])  # in, out
BATCH_SEGMENTS = Histogram("segpress_model_batch_segments", "Segments per model call",
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
IN_PROGRESS = Gauge("segpress_requests_in_progress", "Requests being processed")
MODEL_REQUESTS = Gauge("segpress_model_requests", "Requests holding a model slot (--max-queue)")
ENCODE_QUEUE = Gauge("segpress_encode_queue_segments", "Segments waiting for the model")


def serve_metrics(host: str, port: int) -> None:
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as e:
        raise SystemExit(f"cannot serve metrics on {host}:{port} ({e.strerror}); "
                         "choose another --metrics-port, or 0 to turn metrics off") from None

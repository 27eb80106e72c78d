"""The respond stage and the Info reply: what a client gets back (text or one
tensor of soft tokens, per-context results, stats), sized against the
message limit before it is sent."""

import grpc

from segpress.v1 import segpress_pb2 as pb

from . import __version__, metrics
from .errors import RequestError
from .flow import Flow, ms


def respond(flow: Flow, t0: float, max_message_bytes: int) -> pb.CompressResponse:
    """The response: per-context results, text or tensor, stats."""
    compressor, stats = flow.compressor, flow.stats
    resp = pb.CompressResponse(
        request_id=flow.req.request_id,
        compressor=compressor.name,
        model=pb.ModelInfo(id=compressor.model_id, fingerprint=compressor.fingerprint),
    )
    for i, (r, segs) in enumerate(zip(flow.rendered, flow.segmented)):
        ctx = resp.contexts.add(text=r.text, original_tokens=r.original_tokens,
                                compressed_tokens=r.compressed_tokens, segments=len(segs),
                                kept=True)
        if flow.choices:  # what render saw was the selected part; report the whole
            choice = flow.choices[i]
            ctx.relevance, ctx.rank = choice.relevance, choice.rank
            ctx.below_cut = choice.below_cut
            # Kept means something of it is in the output: a context whose
            # budget kept no word is reported as dropped.
            ctx.kept = choice.kept and (bool(r.text) or r.tensor is not None and len(r.tensor) > 0)
            ctx.original_tokens = sum(s.n_tokens for s in segs)
    if compressor.output == "tensor":
        put_tensors(resp, flow.rendered, compressor, flow.params.output_dtype,
                     max_message_bytes)
    else:
        order = range(len(flow.rendered))
        if flow.choices and flow.options.order == "relevance":
            order = sorted(order, key=lambda i: flow.choices[i].rank)
        resp.text = "\n\n".join(flow.rendered[i].text for i in order
                                 if not flow.choices or resp.contexts[i].kept)
        # The text is in the message twice (per context and joined): a
        # request within max_request_bytes can still make a response
        # over max_message_bytes. Refuse it here, with a status the log
        # and metrics see, rather than fail the send.
        size = resp.ByteSize() + STATS_HEADROOM
        if size > max_message_bytes:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the response would be about {size} bytes (the kept text "
                               "is sent per context and joined); the limit is "
                               f"max_message_bytes={max_message_bytes}: send "
                               "fewer or shorter contexts per request, or a lower rate")
    stats.segments = sum(len(s) for s in flow.segmented)
    stats.cache_misses = sum(1 for ks in flow.keys for k in ks if k in flow.missing)
    stats.cache_hits = sum(len(ks) for ks in flow.keys) - stats.cache_misses
    if flow.vector_keys:
        stats.sentence_vector_misses = sum(1 for ks in flow.vector_keys for k in ks
                                           if k in flow.missing)
        stats.sentence_vector_hits = stats.segments - stats.sentence_vector_misses
    stats.original_tokens = sum(c.original_tokens for c in resp.contexts)
    stats.compressed_tokens = sum(r.compressed_tokens for r in flow.rendered)
    if stats.compressed_tokens:
        stats.ratio = stats.original_tokens / stats.compressed_tokens
    if stats.original_tokens:
        stats.rate = stats.compressed_tokens / stats.original_tokens
    stats.timings.total_ms = ms(t0)
    resp.stats.CopyFrom(stats)
    record(stats)
    return resp


def info(pipeline) -> pb.InfoResponse:
    """What the server serves: its compressors, their models and the limits."""
    resp = pb.InfoResponse(version=__version__, default_compressor=pipeline.default_compressor)
    for c in pipeline.compressors.values():
        resp.compressors.add(
            name=c.name,
            output=pb.OUTPUT_KIND_TEXT if c.output == "text" else pb.OUTPUT_KIND_SOFT_TOKENS,
            model=pb.ModelInfo(id=c.model_id, fingerprint=c.fingerprint),
            max_segment_tokens=c.max_segment_tokens,
        )
        if c.output == "tensor":
            resp.compressors[-1].decoder.id = c.decoder_id
            resp.compressors[-1].decoder.fingerprint = c.decoder_fingerprint
            resp.compressors[-1].pooling_factors.extend(c.pooling_factors)
        for limit, value in c.limits.items():
            setattr(resp.limits, limit, value)
    cfg = pipeline.config
    if pipeline.selector is not None:
        resp.limits.max_query_tokens = pipeline.selector.max_query_tokens
    resp.limits.max_contexts = cfg.max_contexts
    resp.limits.max_query_bytes = cfg.max_query_bytes
    resp.limits.max_request_bytes = cfg.max_request_bytes
    resp.limits.max_message_bytes = cfg.max_message_bytes
    if resp.limits.max_refine_steps:
        resp.limits.max_refine_segment_steps = cfg.max_refine_segment_steps
    return resp


def put_tensors(resp: pb.CompressResponse, rendered, compressor, dtype: str, max_bytes: int) -> None:
    """Soft tokens into the response: all contexts' rows concatenated, once,
    in CompressResponse.tensor ([rows, hidden], in `dtype`, with segment row
    offsets and the decoder they are for); each context gets its row and
    segment range in it."""
    import numpy as np
    from segpress.tensors import from_numpy

    row = segment = 0
    for r, ctx in zip(rendered, resp.contexts):
        ctx.row_start, ctx.row_end = row, row + len(r.tensor)
        ctx.segment_start, ctx.segment_end = segment, segment + len(r.segment_rows)
        row, segment = ctx.row_end, ctx.segment_end
    segment_rows = [n for r in rendered for n in r.segment_rows]
    t = from_numpy(np.concatenate([r.tensor for r in rendered]), dtype,
                   np.concatenate([[0], np.cumsum(segment_rows, dtype=np.int64)]))
    t.decoder_id, t.decoder_fingerprint = compressor.decoder_id, compressor.decoder_fingerprint
    resp.tensor.CopyFrom(t)

    # The whole message must fit the server's max_send_message_length; refuse
    # here with a message that says what to change rather than fail the send.
    size = resp.ByteSize() + STATS_HEADROOM
    if size > max_bytes:
        raise too_big(compressor.name, *t.shape, dtype, size, max_bytes)


def too_big(name: str, rows: int, hidden: int, dtype: str, size: int, max_bytes: int) -> RequestError:
    return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the response would hold {rows} rows of {hidden} {dtype}, about "
                        f"{size} bytes; the limit is max_message_bytes={max_bytes}: send "
                        "fewer or shorter contexts per request, or ask for "
                        f"{name}.output_dtype DTYPE_FLOAT16/DTYPE_BFLOAT16")


STATS_HEADROOM = 1024  # bytes for CompressResponse.stats, filled in after the tensor
TENSOR_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}  # bytes per element on the wire


def record(stats: pb.Stats) -> None:
    """Adds a finished request's numbers to the Prometheus metrics."""
    tm = stats.timings
    for stage in ("segment", "cache_lookup", "select", "encode", "cache_store", "render"):
        metrics.STAGE.labels(stage).observe(getattr(tm, f"{stage}_ms") / 1000.0)
    metrics.CACHE.labels("hit").inc(stats.cache_hits)
    metrics.CACHE.labels("miss").inc(stats.cache_misses)
    metrics.CACHE_ERRORS.inc(stats.cache_errors)
    metrics.TOKENS.labels("in").inc(stats.original_tokens)
    metrics.TOKENS.labels("out").inc(stats.compressed_tokens)

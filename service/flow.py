"""One request on its way through the pipeline's stages (service/pipeline.py),
and the time each stage takes."""

import contextlib
import time
from dataclasses import dataclass, field

from compressors.base import Compressor, ContextParts, Encoded, Rendered, Segment
from compressors.relevance import Options
from segpress.v1 import segpress_pb2 as pb


@dataclass
class Flow:
    """One request on its way through the stages; each stage fills its part."""

    req: pb.CompressRequest
    compressor: Compressor
    params: object  # the compressor's Params
    namespace: str
    mode: str  # use, bypass or refresh
    options: Options | None  # query-aware selection's options; None: no selection
    stats: pb.Stats = field(default_factory=pb.Stats)
    segmented: list[list[Segment]] = field(default_factory=list)  # per context
    keys: list[list[str]] = field(default_factory=list)           # per context, per segment
    # The segments (and their keys above) that go on to the compressor: all
    # of them, or with a soft compressor, those selection kept.
    chosen: list[list[Segment]] = field(default_factory=list)
    vector_keys: list[list[str]] = field(default_factory=list)    # the same, sentence vectors
    texts: dict[str, str] = field(default_factory=dict)           # key -> segment text, unique
    encoders: dict[str, object] = field(default_factory=dict)     # key -> what encodes it
    found: dict[str, Encoded] = field(default_factory=dict)       # key -> encoded value
    missing: dict[str, str] = field(default_factory=dict)         # key -> text, not in the cache
    owned: list[str] = field(default_factory=list)                # keys this request computed
    # Keys another request had just computed when this one's lookup missed
    # them (single flight's finished results): written back like owned ones.
    reused: list[str] = field(default_factory=list)
    leases: dict[str, str] = field(default_factory=dict)          # key -> lease token held
    segment_of: dict[str, Segment] = field(default_factory=dict)  # key -> segment, when checked
    parts: list[ContextParts] = field(default_factory=list)       # what render reads
    query_vector: object = None  # future of the query's embedding, with selection
    choices: list = field(default_factory=list)                   # relevance.Choice per context
    rendered: list[Rendered] = field(default_factory=list)
    pool: object = None  # where its CPU work runs after lookup: light with no misses


@contextlib.contextmanager
def timed(flow: Flow, timing: str):
    """Adds the time the block takes to flow.stats.timings.<timing>."""
    t = time.perf_counter()
    try:
        yield
    finally:
        setattr(flow.stats.timings, timing, getattr(flow.stats.timings, timing) + ms(t))


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0

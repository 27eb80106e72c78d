"""`segpress bench`: speed of the llmlingua2 path, side by side in one run.

Every number is a ratio or rate taken in this one process run, with the
compared methods interleaved and the median of `--repeats` runs reported, so
a noisy machine moves all methods together:

1. Cold throughput (no cache), one row per engine (torch float32, torch
   bfloat16, ONNX Runtime float32, ONNX Runtime int8; `--engines`), each
   through the whole pipeline and as its bare forward passes over the same
   segments (the ceiling), against the reference `llmlingua` package on the
   same checkpoint and texts (float32, as it runs on CPU); and each engine's
   keep decisions against torch float32's (share of words).
2. Warm against cold: the same request with every segment cached in Redis
   against the request with an empty cache; cached as served (segmentations
   in the in-process LRU), without that LRU, and with decoded values in
   process (--local-cache-mb), each with its stages' times.
3. Cost per token at 1k, 10k and 100k tokens of context (cold).
4. Throughput through the gRPC server (a real `segpress serve` process) with
   1, 4 and 16 concurrent clients.
5. Query-aware selection: a request with a query against the same request
   without one, on 10 contexts, all cached and all cold; the sample's
   paragraphs rotated, and distinct dev-essay passages.
6. HTTP/JSON against gRPC: the same request to the same `segpress serve`
   process, one persistent connection each, every segment cached and cold.
"""

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from compressors.base import length_sorted_batches
from compressors.llmlingua2 import LLMLingua2
from compressors.engines import resolve_dtype
from segpress import SegpressClient

from ..config import Config
from ..pipeline import Pipeline


def bench_texts(sample: str, n_docs: int) -> list[str]:
    """`n_docs` different documents (about 620 tokens each) made of the
    sample's paragraphs in rotated order, each with its own first line."""
    paras = [p for p in sample.split("\n\n") if p.strip()]
    docs = []
    for d in range(n_docs):
        order = paras[d % len(paras):] + paras[: d % len(paras)]
        docs.append(f"Document {d}.\n\n" + "\n\n".join(order))
    return docs


def timed(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per method; methods interleaved, after one warm-up each."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def keep_decisions(comp: LLMLingua2, texts: list[str], rate: float) -> list[np.ndarray]:
    """Per text (one context each), which of its words `comp` keeps at `rate`
    ([words] bool, in text order)."""
    from compressors.base import ContextParts
    from compressors.keep import budgets, context_words, select
    from compressors.llmlingua2 import Params

    out = []
    for text in texts:
        segs = comp.segment(text)
        w = context_words(ContextParts(text, segs, comp.encode([s.text for s in segs])))
        (budget,) = budgets([int(w["tokens"].sum())], Params(rate=rate))
        kept = {(s, e) for s, e, _, _ in select(text, w, budget, Params(rate=rate))}
        out.append(np.array([(int(s), int(e)) in kept for s, e in w["spans"]], dtype=bool))
    return out


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Share of words on which two sets of keep decisions agree."""
    same = sum(int((x == y).sum()) for x, y in zip(a, b))
    return same / max(sum(len(x) for x in a), 1)


# The engines section 1 compares, as (engine, dtype) for LLMLingua2.
ENGINE_ROWS = {"torch float32": ("torch", "float32"), "torch bfloat16": ("torch", "bfloat16"),
               "onnx float32": ("onnx", "float32"), "onnx int8": ("onnx-int8", "auto"),
               "openvino float32": ("openvino", "float32"), "openvino bfloat16": ("openvino", "bfloat16"),
               "openvino int8": ("openvino-int8", "auto")}


class Bench:
    def __init__(self, config: Config, sample: str, rate: float, repeats: int):
        self.config, self.rate, self.repeats = config, rate, repeats
        self.sample = sample
        # Cold runs use namespaces no earlier run used: the embedded Redis
        # under --cache-dir keeps what earlier benches stored.
        self.run_id = os.urandom(4).hex()
        self.loop = asyncio.new_event_loop()  # one loop: the pipelines' batchers live on it
        self.comp = self._compressor(config.engine, config.model_dtype)
        self.pipeline = Pipeline(config, {"llmlingua2": self.comp}, store=None)

    def _compressor(self, engine: str, dtype: str) -> LLMLingua2:
        c = self.config
        return LLMLingua2(c.llmlingua2_model, device=c.device, batch_size=c.batch_size, dtype=dtype,
                          engine=engine)

    def compress(self, pipeline, texts, **kw):
        req = SegpressClient.request(texts, rate=self.rate, **kw)
        return self.loop.run_until_complete(pipeline.compress(req))

    def tokens(self, texts) -> int:
        return sum(len(self.comp.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    # 1 --------------------------------------------------------------------
    def cold(self, n_docs: int, with_reference: bool, engines=tuple(ENGINE_ROWS)) -> dict:
        """Every engine through the whole pipeline and as its bare forward
        passes, and the reference, interleaved; each engine's keep decisions
        against torch float32's."""
        texts = bench_texts(self.sample, n_docs)
        comps = {}
        for name in engines:
            engine, dtype = ENGINE_ROWS[name]
            want = "int8" if engine == "onnx-int8" else resolve_dtype(dtype, self.config.device)
            same = (self.comp.engine.name, self.comp.dtype) == (engine, want)
            comps[name] = self.comp if same else self._compressor(engine, dtype)
        pipes = {name: Pipeline(self.config, {"llmlingua2": c}, store=None) for name, c in comps.items()}
        ids = sorted((self.comp.tokenizer(s.text, add_special_tokens=False)["input_ids"]
                      for t in texts for s in self.comp.segment(t)), key=len)

        def forward(c):  # the forward passes segpress makes (its batching), nothing else
            def run():
                for batch in length_sorted_batches([len(i) + 2 for i in ids], *c._batching()):
                    c._keep_probs([ids[i] for i in batch])
            return run

        fns = {}
        for name in comps:
            fns[f"segpress {name}"] = lambda p=pipes[name]: self.compress(p, texts, cache="bypass")
            fns[f"bare forward {name}"] = forward(comps[name])
        if with_reference:
            from ..evaluation.reference import reference_compressor

            ref = reference_compressor(self.config.llmlingua2_model)
            fns["reference llmlingua (float32)"] = lambda: ref.compress_prompt_llmlingua2(
                texts, rate=self.rate)
        medians = timed(fns, self.repeats)
        base = comps.get("torch float32") or self._compressor("torch", "float32")
        want = keep_decisions(base, texts, self.rate)
        for p in pipes.values():
            self.loop.run_until_complete(p.close())
        tokens = self.tokens(texts)
        ref_s = medians.get("reference llmlingua (float32)")
        methods = {}
        for name, m in medians.items():
            row = {"median_s": round(m, 4), "tokens_per_s": round(tokens / m, 1)}
            if ref_s:
                row["vs_reference"] = round(ref_s / m, 3)
            engine = name.removeprefix("segpress ")
            if engine in comps:
                row["of_bare_forward"] = round(medians[f"bare forward {engine}"] / m, 3)
                row["agreement_vs_torch_float32"] = round(
                    agreement(want, keep_decisions(comps[engine], texts, self.rate)), 5)
            methods[name] = row
        return {"tokens": tokens, "documents": n_docs, "default": f"{self.comp.engine.name} {self.comp.dtype}",
                "methods": methods}

    # 2 --------------------------------------------------------------------
    def warm_vs_cold(self, n_docs: int) -> dict:
        """The same request cold (a fresh namespace each run) and with every
        segment cached: as served (segmentations in the in-process LRU), with
        that LRU off (a context's first sight on this replica), and with the
        values' LRU on (--local-cache-mb: no Redis round trip); the stages'
        times of each."""
        import dataclasses

        from ..assemble import make_store

        texts = bench_texts(self.sample, n_docs)
        store, embedded = self.loop.run_until_complete(make_store(self.config))
        variants = {"warm": {}, "warm, segmentation not cached": {"segment_cache_mb": 0},
                    "warm, values in process": {"local_cache_mb": 64}}
        pipes = {name: Pipeline(dataclasses.replace(self.config, **kw), {"llmlingua2": self.comp}, store)
                 for name, kw in variants.items()}
        cached = pipes["warm"]
        runs = iter(range(10**6))
        stages = {}

        def run(name):
            def go():
                r = self.compress(pipes[name], texts, namespace="bench-warm")
                assert r.stats.cache_hits == r.stats.segments, "warm run was not fully cached"
                stages.setdefault(name, []).append(r.stats.timings)
                return r
            return go

        try:
            first = self.compress(cached, texts, namespace="bench-warm")  # fill the cache
            medians = timed({
                # A fresh namespace each time: nothing cached, then stored.
                "cold": lambda: self.compress(cached, texts, namespace=f"bench-cold-{self.run_id}-{next(runs)}"),
                **{name: run(name) for name in variants},
            }, self.repeats)
            for name in variants:
                assert run(name)().text == first.text, "a warm response differs from the cold one"
        finally:
            for p in pipes.values():
                self.loop.run_until_complete(p.close())
            self.loop.run_until_complete(store.close())
            if embedded is not None:
                embedded.shutdown()
        tokens = self.tokens(texts)
        out = {"tokens": tokens, "cold_ms": round(medians["cold"] * 1000, 2)}
        for name in variants:
            ms = medians[name] * 1000
            out[name] = {"ms": round(ms, 2), "ms_per_1k_tokens": round(ms / tokens * 1000, 3),
                         "speedup": round(medians["cold"] * 1000 / ms, 1), "stages_ms": {
                             stage: round(statistics.median(getattr(t, f"{stage}_ms") for t in stages[name]), 2)
                             for stage in ("segment", "cache_lookup", "render", "total")}}
        out["warm_ms"], out["speedup"] = out["warm"]["ms"], out["warm"]["speedup"]
        return out

    # 3 --------------------------------------------------------------------
    def cost_per_token(self, sizes=(1_000, 10_000, 100_000)) -> dict:
        out = {}
        one_doc = self.tokens(bench_texts(self.sample, 1))
        for size in sizes:
            n_docs = max(1, round(size / one_doc))
            texts = ["\n\n".join(bench_texts(self.sample, n_docs))]  # one long context
            tokens = self.tokens(texts)
            m = timed({"run": lambda: self.compress(self.pipeline, texts, cache="bypass")},
                      self.repeats if size < 50_000 else 1)["run"]
            out[str(size)] = {"tokens": tokens, "ms_per_1k_tokens": round(m / tokens * 1e6, 2)}
        first = next(iter(out.values()))["ms_per_1k_tokens"]
        for v in out.values():
            v["vs_smallest"] = round(v["ms_per_1k_tokens"] / first, 3)
        return out

    # 4 --------------------------------------------------------------------
    def concurrency(self, levels=(1, 4, 16), docs_per_level: int = 32) -> dict:
        texts = bench_texts(self.sample, docs_per_level)
        tokens = self.tokens(texts)
        server = _server(self.config)
        with server as target:
            out = {}
            for n in levels:
                def one(i, n=n):
                    with SegpressClient(target, timeout_s=600) as c:
                        for t in texts[i::n]:
                            c.compress([t], rate=self.rate, cache="bypass")

                def clients(n=n, one=one):
                    with ThreadPoolExecutor(n) as pool:
                        list(pool.map(one, range(n)))

                m = timed({"run": clients}, self.repeats)["run"]
                out[str(n)] = {"tokens_per_s": round(tokens / m, 1)}
            first = out[str(levels[0])]["tokens_per_s"]
            for v in out.values():
                v["vs_one_client"] = round(v["tokens_per_s"] / first, 3)
        return {"tokens": tokens, "clients": out, "start_to_serving_s": round(server.start_s, 2)}

    # 5 --------------------------------------------------------------------
    def query_cost(self, n_docs: int = 10) -> dict:
        """With a query against without, both cached (one query embedding and
        the ranking on top of a cached request) and both cold, on two
        requests: the sample's paragraphs rotated into `n_docs` documents
        (every context about as relevant as the others: selection keeps some
        of each), and `n_docs` different dev essays' excerpts with one fact
        sentence each, asking for the first's (retrieved passages of which
        one answers, as a RAG pipeline sends them)."""
        from compressors.training import corpus

        from ..evaluation.tasks import needle

        passages = needle(corpus.split(self.config.cache_dir)["dev"], n_docs, seed=0, words=450)
        return {"sample": self._query_cost(bench_texts(self.sample, n_docs),
                                           "What did the keeper record in his log?"),
                "passages": self._query_cost([e.context for e in passages], passages[0].question)}

    def _query_cost(self, texts: list[str], question: str) -> dict:
        from ..assemble import make_store, sentence_vectors

        store, embedded = self.loop.run_until_complete(make_store(self.config))
        compressors = {"llmlingua2": self.comp}
        selector = sentence_vectors(self.config, compressors)
        pipe = Pipeline(self.config, compressors, store, selector)
        runs = iter(range(10**6))
        try:
            for kw in ({}, {"query": question}):  # fill the cache, both kinds of values
                self.compress(pipe, texts, namespace="bench-query", **kw)
            cached = timed({
                "without query": lambda: self.compress(pipe, texts, namespace="bench-query"),
                "with query": lambda: self.compress(pipe, texts, namespace="bench-query",
                                                    query=question),
            }, self.repeats)
            cold = timed({
                "without query": lambda: self.compress(pipe, texts, namespace=f"q-{self.run_id}-{next(runs)}"),
                "with query": lambda: self.compress(pipe, texts, namespace=f"q-{self.run_id}-{next(runs)}",
                                                    query=question),
            }, self.repeats)
            kept = self.compress(pipe, texts, namespace="bench-query", query=question).contexts
        finally:
            self.loop.run_until_complete(pipe.close())
            self.loop.run_until_complete(store.close())
            if embedded is not None:
                embedded.shutdown()
        return {"tokens": self.tokens(texts), "contexts": len(texts),
                "contexts_kept": sum(c.kept for c in kept), **{
                    name: {"without_query_ms": round(m["without query"] * 1000, 2),
                           "with_query_ms": round(m["with query"] * 1000, 2),
                           "ratio": round(m["with query"] / m["without query"], 3)}
                    for name, m in (("cached", cached), ("cold", cold))}}

    def close(self):
        self.loop.run_until_complete(self.pipeline.close())
        self.loop.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _server:
    """A real `segpress serve` process on a free port, for the concurrency run."""

    def __init__(self, config: Config, http: bool = False):
        self.port, http_port = _free_port(), _free_port() if http else 0
        self.http_url = f"http://127.0.0.1:{http_port}"
        self.env = {**os.environ, "SEGPRESS_PORT": str(self.port), "SEGPRESS_METRICS_PORT": "0",
                    "SEGPRESS_HTTP_PORT": str(http_port),
                    "SEGPRESS_LLMLINGUA2_MODEL": config.llmlingua2_model,
                    "SEGPRESS_MODEL_DTYPE": config.model_dtype, "SEGPRESS_ENGINE": config.engine,
                    "SEGPRESS_CACHE_DIR": tempfile.mkdtemp(prefix="segpress-bench-")}

    def __enter__(self) -> str:
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = f"127.0.0.1:{self.port}"
        t0 = time.time()
        deadline = t0 + 300
        while time.time() < deadline:
            try:
                with SegpressClient(target, timeout_s=2) as c:
                    c.info()
                self.start_s = time.time() - t0  # process start to answering (models built)
                return target
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        raise RuntimeError("bench server did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(60)


def main(args, config: Config) -> int:
    from compressors.models import ensure_default_llmlingua2

    from ..config import SAMPLE
    from .http import http_vs_grpc

    if not config.llmlingua2_model:
        config.llmlingua2_model = str(ensure_default_llmlingua2(config.models_dir))
    bench = Bench(config, SAMPLE.read_text(encoding="utf-8"), args.rate, args.repeats)
    try:
        result = {"rate": args.rate, "repeats": args.repeats,
                  "torch_threads": __import__("torch").get_num_threads()}
        engines = tuple(e.strip() for e in args.engines.split(",")) if args.engines else tuple(ENGINE_ROWS)
        sections = {
            "cold": ("cold", lambda: bench.cold(args.docs, not args.no_reference, engines)),
            "warm": ("warm_vs_cold", lambda: bench.warm_vs_cold(args.docs)),
            "cost": ("cost_per_token", lambda: bench.cost_per_token(
                (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000))),
            "concurrency": ("concurrency", lambda: bench.concurrency(docs_per_level=8 if args.quick else 32)),
            "query": ("query_cost", bench.query_cost),
            "http": ("http_vs_grpc", lambda: http_vs_grpc(
                bench, bench_texts(bench.sample, args.docs), _server(config, http=True), timed)),
        }
        only = [n.strip() for n in (args.only or ",".join(sections)).split(",") if n.strip()]
        for name in only:
            if name not in sections:
                raise SystemExit(f"--only: unknown section {name!r}; one of {', '.join(sections)}")
            key, run = sections[name]
            result[key] = run()
    finally:
        bench.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from .report import print_report

        print_report(result)
    return 0

"""`segpress bench`: speed of the llmlingua2 path, side by side in one run.

Every number is a ratio or rate taken in this one process run, with the
compared methods interleaved and the median of `--repeats` runs reported, so
a noisy machine moves all methods together:

1. Cold throughput (no cache): segpress against the reference `llmlingua`
   package on the same checkpoint and texts (the reference runs float32, as
   it does on CPU), and against the bare model forward pass over the same
   segments (the ceiling). When segpress runs bfloat16, a float32 segpress
   row is added.
2. Warm against cold: the same request with every segment cached in Redis
   against the request with an empty cache.
3. Cost per token at 1k, 10k and 100k tokens of context (cold).
4. Throughput through the gRPC server (a real `segpress serve` process) with
   1, 4 and 16 concurrent clients.
5. Query-aware selection: a request with a query against the same request
   without one, on 10 contexts, all cached and all cold.
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

from compressors.llmlingua2 import LLMLingua2
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
    from compressors.llmlingua2 import Params, _budgets, context_words, select

    out = []
    for text in texts:
        segs = comp.segment(text)
        w = context_words(ContextParts(text, segs, comp.encode([s.text for s in segs])))
        (budget,) = _budgets([int(w["tokens"].sum())], Params(rate=rate))
        kept = {(s, e) for s, e, _, _ in select(text, w, budget, Params(rate=rate))}
        out.append(np.array([(int(s), int(e)) in kept for s, e in w["spans"]], dtype=bool))
    return out


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Share of words on which two sets of keep decisions agree."""
    same = sum(int((x == y).sum()) for x, y in zip(a, b))
    return same / max(sum(len(x) for x in a), 1)


class Bench:
    def __init__(self, config: Config, sample: str, rate: float, repeats: int):
        self.config, self.rate, self.repeats = config, rate, repeats
        self.sample = sample
        self.loop = asyncio.new_event_loop()  # one loop: the pipelines' batchers live on it
        self.comp = self._compressor(config.model_dtype)
        self.pipeline = Pipeline(config, {"llmlingua2": self.comp}, store=None)

    def _compressor(self, dtype: str) -> LLMLingua2:
        c = self.config
        return LLMLingua2(c.llmlingua2_model, device=c.device, batch_size=c.batch_size, dtype=dtype)

    def compress(self, pipeline, texts, **kw):
        req = SegpressClient.request(texts, rate=self.rate, **kw)
        return self.loop.run_until_complete(pipeline.compress(req))

    def tokens(self, texts) -> int:
        return sum(len(self.comp.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    # 1 --------------------------------------------------------------------
    def cold(self, n_docs: int, with_reference: bool) -> dict:
        texts = bench_texts(self.sample, n_docs)
        fns = {f"segpress llmlingua2 ({self.comp.dtype})":
               lambda: self.compress(self.pipeline, texts, cache="bypass")}
        if self.comp.dtype != "float32":
            fp32 = Pipeline(self.config, {"llmlingua2": self._compressor("float32")}, store=None)
            fns["segpress llmlingua2 (float32)"] = lambda: self.compress(fp32, texts, cache="bypass")
        ids = sorted((self.comp.tokenizer(s.text, add_special_tokens=False)["input_ids"]
                      for t in texts for s in self.comp.segment(t)), key=len)

        def forward():  # the same forward passes segpress makes, nothing else
            for b in range(0, len(ids), self.comp.batch_size):
                self.comp._keep_probs(ids[b : b + self.comp.batch_size])

        fns[f"bare forward pass ({self.comp.dtype})"] = forward
        if with_reference:
            from ..evaluation.reference import reference_compressor

            ref = reference_compressor(self.config.llmlingua2_model)
            fns["reference llmlingua (float32)"] = lambda: ref.compress_prompt_llmlingua2(
                texts, rate=self.rate)
        medians = timed(fns, self.repeats)
        if self.comp.dtype != "float32":
            self.loop.run_until_complete(fp32.close())
        tokens = self.tokens(texts)
        base = next(iter(medians.values()))
        return {"tokens": tokens, "documents": n_docs, "methods": {
            name: {"median_s": round(m, 4), "tokens_per_s": round(tokens / m, 1),
                   "segpress_speedup": round(m / base, 3)}
            for name, m in medians.items()}}

    # 2 --------------------------------------------------------------------
    def warm_vs_cold(self, n_docs: int) -> dict:
        from ..server import make_store

        texts = bench_texts(self.sample, n_docs)
        store, embedded = self.loop.run_until_complete(make_store(self.config))
        cached = Pipeline(self.config, {"llmlingua2": self.comp}, store)
        runs = iter(range(10**6))
        try:
            self.compress(cached, texts, namespace="bench-warm")  # fill the cache
            medians = timed({
                # A fresh namespace each time: nothing cached, then stored.
                "cold": lambda: self.compress(cached, texts, namespace=f"bench-cold-{next(runs)}"),
                "warm": lambda: self.compress(cached, texts, namespace="bench-warm"),
            }, self.repeats)
            hits = self.compress(cached, texts, namespace="bench-warm").stats
            assert hits.cache_hits == hits.segments, "warm run was not fully cached"
        finally:
            self.loop.run_until_complete(cached.close())
            self.loop.run_until_complete(store.close())
            if embedded is not None:
                embedded.shutdown()
        return {"tokens": self.tokens(texts), "cold_ms": round(medians["cold"] * 1000, 2),
                "warm_ms": round(medians["warm"] * 1000, 2),
                "speedup": round(medians["cold"] / medians["warm"], 1)}

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
        with _server(self.config) as target:
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
        return {"tokens": tokens, "clients": out}

    # 5 --------------------------------------------------------------------
    def query_cost(self, n_docs: int = 10) -> dict:
        """With a query against without, both cached (one query embedding and
        the ranking on top of a cached request) and both cold."""
        from compressors.relevance import SentenceVectors

        from ..server import make_store

        texts = bench_texts(self.sample, n_docs)
        question = "What did the keeper record in his log?"
        store, embedded = self.loop.run_until_complete(make_store(self.config))
        pipe = Pipeline(self.config, {"llmlingua2": self.comp}, store, SentenceVectors())
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
                "without query": lambda: self.compress(pipe, texts, namespace=f"q-{next(runs)}"),
                "with query": lambda: self.compress(pipe, texts, namespace=f"q-{next(runs)}",
                                                    query=question),
            }, self.repeats)
        finally:
            self.loop.run_until_complete(pipe.close())
            self.loop.run_until_complete(store.close())
            if embedded is not None:
                embedded.shutdown()
        return {"tokens": self.tokens(texts), "contexts": n_docs, **{
            name: {"without_query_ms": round(m["without query"] * 1000, 2),
                   "with_query_ms": round(m["with query"] * 1000, 2),
                   "ratio": round(m["with query"] / m["without query"], 3)}
            for name, m in (("cached", cached), ("cold", cold))}}

    def close(self):
        self.loop.run_until_complete(self.pipeline.close())
        self.loop.close()


class _server:
    """A real `segpress serve` process on a free port, for the concurrency run."""

    def __init__(self, config: Config):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.env = {**os.environ, "SEGPRESS_PORT": str(self.port), "SEGPRESS_METRICS_PORT": "0",
                    "SEGPRESS_LLMLINGUA2_MODEL": config.llmlingua2_model,
                    "SEGPRESS_MODEL_DTYPE": config.model_dtype,
                    "SEGPRESS_CACHE_DIR": tempfile.mkdtemp(prefix="segpress-bench-")}

    def __enter__(self) -> str:
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = f"127.0.0.1:{self.port}"
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with SegpressClient(target, timeout_s=2) as c:
                    c.info()
                return target
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        raise RuntimeError("bench server did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(60)


def print_report(r: dict) -> None:
    c = r["cold"]
    print(f"\n1. cold compression: {c['documents']} documents, {c['tokens']} tokens, "
          f"rate {r['rate']}, median of {r['repeats']}")
    print(f"   {'method':<34} {'median s':>9} {'tokens/s':>10} {'segpress speedup':>17}")
    for name, m in c["methods"].items():
        print(f"   {name:<34} {m['median_s']:>9.3f} {m['tokens_per_s']:>10.0f} "
              f"{m['segpress_speedup']:>16.2f}x")
    w = r["warm_vs_cold"]
    print(f"\n2. same request ({w['tokens']} tokens), cold vs all segments cached: "
          f"{w['cold_ms']:.1f} ms vs {w['warm_ms']:.1f} ms = {w['speedup']}x")
    print("\n3. cost per token, one context, cold:")
    for size, v in r["cost_per_token"].items():
        print(f"   {v['tokens']:>7} tokens: {v['ms_per_1k_tokens']:>7.1f} ms per 1k tokens "
              f"({v['vs_smallest']:.2f}x the smallest)")
    k = r["concurrency"]
    print(f"\n4. through the gRPC server, {k['tokens']} tokens in total, cold:")
    for n, v in k["clients"].items():
        print(f"   {n:>2} clients: {v['tokens_per_s']:>8.0f} tokens/s ({v['vs_one_client']:.2f}x one client)")
    q = r["query_cost"]
    print(f"\n5. query-aware selection, {q['contexts']} contexts, {q['tokens']} tokens:")
    for name in ("cached", "cold"):
        v = q[name]
        print(f"   {name:<6}: {v['with_query_ms']:.1f} ms with a query vs {v['without_query_ms']:.1f} ms "
              f"without = {v['ratio']:.2f}x")


def main(args, config: Config) -> int:
    from compressors.models import ensure_default_llmlingua2

    from ..config import SAMPLE

    if not config.llmlingua2_model:
        config.llmlingua2_model = str(ensure_default_llmlingua2(config.models_dir))
    bench = Bench(config, SAMPLE.read_text(encoding="utf-8"), args.rate, args.repeats)
    try:
        result = {"rate": args.rate, "repeats": args.repeats,
                  "torch_threads": __import__("torch").get_num_threads()}
        result["cold"] = bench.cold(args.docs, not args.no_reference)
        result["warm_vs_cold"] = bench.warm_vs_cold(args.docs)
        result["cost_per_token"] = bench.cost_per_token(
            (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000))
        result["concurrency"] = bench.concurrency(docs_per_level=8 if args.quick else 32)
        result["query_cost"] = bench.query_cost()
    finally:
        bench.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0

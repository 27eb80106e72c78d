"""`segpress bench`: compression throughput, side by side in one run.

Cold throughput (no cache) of segpress's llmlingua2 against the reference
`llmlingua` package on the same checkpoint and texts, and against the bare
model forward pass over the same tokens (the ceiling). Each method runs
`--repeats` times, interleaved, and the median is reported, so the ratios
compare runs made under the same machine load.
"""

import asyncio
import json
import statistics
import time

import torch

from compressors.llmlingua2 import LLMLingua2
from segpress import SegpressClient

from .config import Config
from .pipeline import Pipeline


def bench_texts(sample: str, n_docs: int) -> list[str]:
    """`n_docs` distinct documents made of the sample's paragraphs in rotated
    order, numbered so no two segments are equal."""
    paras = [p for p in sample.split("\n\n") if p.strip()]
    docs = []
    for d in range(n_docs):
        order = paras[d % len(paras):] + paras[: d % len(paras)]
        docs.append(f"Document {d}.\n\n" + "\n\n".join(order))
    return docs


def run(config: Config, texts: list[str], rate: float, repeats: int, with_reference: bool) -> dict:
    comp = LLMLingua2(config.llmlingua2_model, device=config.device, batch_size=config.batch_size,
                      dtype=config.model_dtype)
    pipeline = Pipeline(config, {"llmlingua2": comp}, store=None)
    req = SegpressClient.request(texts, rate=rate, cache="bypass")
    tokens = sum(len(comp.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)

    loop = asyncio.new_event_loop()  # one loop: the pipeline's batcher lives on it

    def segpress_run():
        loop.run_until_complete(pipeline.compress(req))

    # The ceiling: only the forward passes, over the segments segpress would
    # feed the model, batched and length-sorted the same way.
    segments = [s.text for t in texts for s in comp.segment(t)]
    ids = [comp.tokenizer(s, add_special_tokens=False)["input_ids"] for s in segments]
    ids.sort(key=len)

    def forward_run():
        for b in range(0, len(ids), comp.batch_size):
            comp._keep_probs(ids[b : b + comp.batch_size])

    methods = {"segpress llmlingua2": segpress_run, "bare forward pass": forward_run}
    if with_reference:
        from compressors.reference import reference_compressor

        ref = reference_compressor(config.llmlingua2_model)
        methods["reference llmlingua"] = lambda: ref.compress_prompt_llmlingua2(texts, rate=rate)

    times = {name: [] for name in methods}
    for fn in methods.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    loop.run_until_complete(pipeline.close())
    loop.close()
    result = {"tokens": tokens, "documents": len(texts), "rate": rate,
              "torch_threads": torch.get_num_threads(), "methods": {}}
    base = statistics.median(times["segpress llmlingua2"])
    for name, ts in times.items():
        med = statistics.median(ts)
        result["methods"][name] = {
            "median_s": round(med, 4), "tokens_per_s": round(tokens / med, 1),
            "time_vs_segpress": round(med / base, 3),
        }
    return result


def print_table(result: dict) -> None:
    print(f"cold compression, {result['documents']} documents, {result['tokens']} tokens, "
          f"rate {result['rate']}, torch threads {result['torch_threads']}")
    print(f"{'method':<22} {'median s':>9} {'tokens/s':>10} {'time vs segpress':>17}")
    for name, m in result["methods"].items():
        print(f"{name:<22} {m['median_s']:>9.3f} {m['tokens_per_s']:>10.0f} "
              f"{m['time_vs_segpress']:>17.2f}")


def main(args, config: Config) -> int:
    from compressors.models import ensure_default_llmlingua2

    from .cli import sample_path

    if not config.llmlingua2_model:
        config.llmlingua2_model = str(ensure_default_llmlingua2(config.models_dir))
    texts = bench_texts(sample_path().read_text(encoding="utf-8"), args.docs)
    result = run(config, texts, args.rate, args.repeats, not args.no_reference)
    print(json.dumps(result, indent=2) if args.json else "", end="")
    if not args.json:
        print_table(result)
    return 0

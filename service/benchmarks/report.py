"""`segpress bench`'s report: one readable block per section of the
result (service/benchmarks/serving.py measures them)."""


def print_report(r: dict) -> None:
    from .http import print_http

    printers = {"cold": _print_cold, "warm_vs_cold": _print_warm, "cost_per_token": _print_cost,
                "concurrency": _print_concurrency, "query_cost": _print_query,
                "http_vs_grpc": print_http}
    for key, show in printers.items():
        if key in r:
            show(r[key]) if key != "cold" else show(r)


def _print_cold(r: dict) -> None:
    c = r["cold"]
    print(f"\n1. cold compression: {c['documents']} documents, {c['tokens']} tokens, "
          f"rate {r['rate']}, median of {r['repeats']} (default engine: {c['default']})")
    print(f"   {'method':<34} {'median s':>9} {'tokens/s':>9} {'vs reference':>13} "
          f"{'of bare':>8} {'keeps as torch fp32':>20}")
    for name, m in c["methods"].items():
        ref = f"{m['vs_reference']:.2f}x" if "vs_reference" in m else "-"
        bare = f"{m['of_bare_forward']:.0%}" if "of_bare_forward" in m else "-"
        agree = f"{m['agreement_vs_torch_float32']:.2%}" if "agreement_vs_torch_float32" in m else "-"
        print(f"   {name:<34} {m['median_s']:>9.3f} {m['tokens_per_s']:>9.0f} {ref:>13} {bare:>8} {agree:>20}")


def _print_warm(w: dict) -> None:
    print(f"\n2. same request ({w['tokens']} tokens), cold {w['cold_ms']:.1f} ms, against all segments cached:")
    for name, v in w.items():
        if isinstance(v, dict):
            st = v["stages_ms"]
            print(f"   {name:<32} {v['ms']:>7.1f} ms ({v['ms_per_1k_tokens']:.2f} ms per 1k tokens, "
                  f"{v['speedup']}x faster; segment {st['segment']}, lookup {st['cache_lookup']}, "
                  f"render {st['render']} ms)")


def _print_cost(cost: dict) -> None:
    print("\n3. cost per token, one context, cold:")
    for size, v in cost.items():
        print(f"   {v['tokens']:>7} tokens: {v['ms_per_1k_tokens']:>7.1f} ms per 1k tokens "
              f"({v['vs_smallest']:.2f}x the smallest)")


def _print_concurrency(k: dict) -> None:
    print(f"\n4. through the gRPC server (start to serving {k['start_to_serving_s']} s), "
          f"{k['tokens']} tokens in total, cold:")
    for n, v in k["clients"].items():
        print(f"   {n:>2} clients: {v['tokens_per_s']:>8.0f} tokens/s ({v['vs_one_client']:.2f}x one client)")


def _print_query(shapes: dict) -> None:
    print("\n5. query-aware selection:")
    for shape, q in shapes.items():
        print(f"   {shape}: {q['contexts']} contexts, {q['tokens']} tokens, "
              f"{q['contexts_kept']} kept with the query")
        for name in ("cached", "cold"):
            v = q[name]
            print(f"     {name:<6}: {v['with_query_ms']:.1f} ms with a query vs "
                  f"{v['without_query_ms']:.1f} ms without = {v['ratio']:.2f}x")

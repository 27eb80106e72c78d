"""The results: a printed table, the issue's targets, a JSON file and a plot."""

import json
from pathlib import Path

# segpress's methods: the default model, keeping words (the default) or sentences.
OURS = ("segpress-llmlingua2", "segpress-llmlingua2-sentences")


def table(summary: list[dict]) -> str:
    """Markdown: one row per (split, task, method, rate)."""
    lines = ["| split | task | method | rate | accuracy | answer kept | evidence kept | ratio "
             "| seconds | n | recall@1 | recall@3 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = {"none": 0, "random": 1, "truncate": 2}
    for s in sorted(summary, key=lambda s: (s["split"], s["task"], s["rate"],
                                            order.get(s["method"], 9), s["method"])):
        lines.append(
            f"| {s['split']} | {s['task']} | {s['method']} | {s['rate']:.2f} | "
            f"{100 * s['accuracy']:.1f}% | {100 * s['retention']:.1f}% | "
            f"{_pct(s.get('evidence'))} | {s['ratio']:.3f} | "
            f"{s['seconds']:.2f} | {s['n']} | {_pct(s.get('recall_at_1'))} | "
            f"{_pct(s.get('recall_at_3'))} |")
    return "\n".join(lines)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def targets(summary: list[dict], rate: float = 0.33, methods=OURS) -> list[dict]:
    """The issue's bar, per split and segpress method: on needle at `rate`,
    accuracy >= 90% of uncompressed and >= random + 20 points; on multidoc,
    above random and truncation."""
    acc = {(s["split"], s["task"], s["method"], s["rate"]): s["accuracy"] for s in summary}
    out = []
    for split, method in sorted({(s["split"], m) for s in summary for m in methods}):
        def a(task, m, r=rate):
            return acc.get((split, task, m, 1.0 if m == "none" else r))
        ours, none, rnd = a("needle", method), a("needle", "none"), a("needle", "random")
        if None not in (ours, none, rnd):
            out.append({"split": split, "target": f"needle: {method} >= 0.9 x none", "value": ours,
                        "bar": 0.9 * none, "met": ours >= 0.9 * none})
            out.append({"split": split, "target": f"needle: {method} >= random + 0.20", "value": ours,
                        "bar": rnd + 0.2, "met": ours >= rnd + 0.2})
        ours = a("multidoc", method)
        for base in ("random", "truncate"):
            other = a("multidoc", base)
            if None not in (ours, other):
                out.append({"split": split, "target": f"multidoc: {method} > {base}", "value": ours,
                            "bar": other, "met": ours > other})
    return out


def differences(rows: list[dict], rate: float = 0.33, methods=OURS, resamples: int = 5000,
                seed: int = 0) -> list[dict]:
    """Accuracy of each segpress method at `rate` minus each other method's
    (uncompressed at rate 1) on the same examples, with a 95% paired
    percentile bootstrap interval over examples (fixed seed)."""
    import numpy as np

    correct: dict[tuple, dict[str, bool]] = {}
    for r in rows:
        correct.setdefault((r["split"], r["task"], r["method"], r["rate"]), {})[r["example"]] = r["correct"]
    out = []
    for (split, task, method, r), ours in sorted(correct.items()):
        if method not in methods or r != rate:
            continue
        for (split2, task2, other, r2), theirs in sorted(correct.items()):
            if (split2, task2) != (split, task) or other == method or r2 != (1.0 if other == "none" else rate):
                continue
            ids = sorted(ours.keys() & theirs.keys())
            d = np.array([ours[i] for i in ids], float) - np.array([theirs[i] for i in ids], float)  # [n]
            rng = np.random.default_rng(seed)
            means = d[rng.integers(0, len(d), (resamples, len(d)))].mean(axis=1)  # [resamples]
            out.append({"split": split, "task": task, "method": method, "minus": other,
                        "rate": rate, "n": len(d), "difference": float(d.mean()),
                        "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]})
    return out


def print_results(summary: list[dict], goals: list[dict], diffs: list[dict]) -> None:
    print(table(summary))
    for g in goals:
        print(f"{g['split']}: {g['target']}: {100 * g['value']:.1f}% vs {100 * g['bar']:.1f}% "
              f"-> {'met' if g['met'] else 'NOT met'}")
    for d in diffs:
        lo, hi = d["ci95"]
        print(f"{d['split']}: {d['task']}: {d['method']} minus {d['minus']}: "
              f"{100 * d['difference']:+.0f} points [{100 * lo:+.0f}, {100 * hi:+.0f}] (n={d['n']})")


def write(out_dir: Path, result: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "eval.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    png_path = out_dir / "eval.png"
    plot(result["summary"], png_path)
    return json_path, png_path


def plot(summary: list[dict], path: Path) -> None:
    """Accuracy against achieved ratio, one panel per (split, task), one line
    per method through its rates and the uncompressed point (ratio 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(s["split"], s["task"]) for s in summary})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (split, task) in zip(axes[0], panels):
        rows = [s for s in summary if s["split"] == split and s["task"] == task]
        full = [(s["ratio"], s["accuracy"]) for s in rows if s["method"] == "none"]
        for method in sorted({s["method"] for s in rows} - {"none"}):
            # At rate 1 every method passes the full text, so each line ends there.
            pts = sorted([(s["ratio"], s["accuracy"]) for s in rows if s["method"] == method] + full)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        if full:
            ax.axhline(full[0][1], color="black", linestyle="--", linewidth=1, label="none (full text)")
        ax.set_title(f"{task} ({split})")
        ax.set_xlabel("achieved ratio (compressed / original tokens)")
        ax.set_ylabel("reader accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    # python -m service.evaluation.report EVAL_JSON: the printed results of a saved run.
    import sys

    saved = json.loads(Path(sys.argv[1]).read_text())
    print_results(saved["summary"], targets(saved["summary"]), differences(saved["rows"]))

"""The results: a printed table, the issue's targets, a JSON file and a plot."""

import json
from pathlib import Path

# segpress's methods: the default model, keeping words (the default) or sentences.
OURS = ("segpress-llmlingua2", "segpress-llmlingua2-sentences")


def table(summary: list[dict]) -> str:
    """Markdown: one row per (split, task, method, rate)."""
    lines = ["| split | task | method | rate | accuracy | answer kept | ratio | seconds | n |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = {"none": 0, "random": 1, "truncate": 2}
    for s in sorted(summary, key=lambda s: (s["split"], s["task"], s["rate"],
                                            order.get(s["method"], 9), s["method"])):
        lines.append(
            f"| {s['split']} | {s['task']} | {s['method']} | {s['rate']:.2f} | "
            f"{100 * s['accuracy']:.1f}% | {100 * s['retention']:.1f}% | {s['ratio']:.3f} | "
            f"{s['seconds']:.2f} | {s['n']} |")
    return "\n".join(lines)


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

"""Runs every method on every example at every rate and scores the reader.

Per (task, method, rate) it reports, over the examples:
  accuracy   the reader's answer contains the expected answer
  retention  the expected answer string survives compression
  evidence   multi-hop tasks: every evidence string (the bridge passage's
             role word and the answer) survives compression
  ratio      compressed / original context tokens (reader tokenizer)
  seconds    compression time per example (prepare + compress)
"""

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .methods import METHODS, Env
from .reader import contains
from .tasks import TASKS, Example

log = logging.getLogger(__name__)


@dataclass
class Plan:
    split: str
    tasks: list[str]
    examples: int            # per task
    rates: list[float]
    seed: int = 0
    rows: list[dict] = field(default_factory=list)  # one per (example, method, rate)


def examples_for(docs: dict[str, str], plan: Plan) -> list[Example]:
    return [ex for t in plan.tasks for ex in TASKS[t](docs, plan.examples, plan.seed)]


def build_methods(names: list[str], env: Env) -> dict:
    """The methods by name, each built once (models load here)."""
    return {name: METHODS[name](env) for name in names}


def run(plan: Plan, docs: dict[str, str], env: Env, methods: dict, progress=log.info) -> Plan:
    """Every example of `plan` through `methods` (from build_methods)."""
    examples = examples_for(docs, plan)
    t0 = time.perf_counter()
    for n, ex in enumerate(examples, 1):
        original = env.reader.count(ex.context)
        for name, method in methods.items():
            start = time.perf_counter()
            state = method.prepare(ex)
            prepare_s = time.perf_counter() - start
            for rate in ([1.0] if name == "none" else plan.rates):
                start = time.perf_counter()
                text = method.compress(ex, state, rate)
                seconds = prepare_s + time.perf_counter() - start
                answer = env.reader.answer(text, ex.question)
                plan.rows.append({
                    "split": plan.split, "task": ex.task, "example": ex.id, "method": name,
                    "rate": rate, "ratio": env.reader.count(text) / original,
                    "correct": contains(answer, ex.answer), "retained": contains(text, ex.answer),
                    "evidence": evidence_kept(ex, text),
                    "seconds": seconds, "answer": answer, "expected": ex.answer,
                    # Query-aware methods: where the ranker put the gold passage.
                    "gold_rank": method.gold_rank(ex, state) if hasattr(method, "gold_rank") else None,
                })
        progress(f"{plan.split}: {n}/{len(examples)} examples, {time.perf_counter() - t0:.0f}s")
    return plan


def evidence_kept(ex: Example, text: str) -> bool | None:
    """Multi-hop tasks: whether every evidence string survives in `text`
    (None for tasks without evidence strings)."""
    if "evidence" not in ex.meta:
        return None
    return all(contains(text, e) for e in ex.meta["evidence"])


def summarize(rows: list[dict]) -> list[dict]:
    """Means per (split, task, method, rate)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["split"], r["task"], r["method"], r["rate"]), []).append(r)
    out = []
    for (split, task, method, rate), rs in groups.items():
        ranks = [r["gold_rank"] for r in rs if r.get("gold_rank") is not None]
        evidence = [r["evidence"] for r in rs if r.get("evidence") is not None]
        out.append({
            "split": split, "task": task, "method": method, "rate": rate, "n": len(rs),
            "accuracy": float(np.mean([r["correct"] for r in rs])),
            "retention": float(np.mean([r["retained"] for r in rs])),
            "ratio": float(np.mean([r["ratio"] for r in rs])),
            "seconds": float(np.mean([r["seconds"] for r in rs])),
            "evidence": float(np.mean(evidence)) if evidence else None,
            # The ranker alone: is the gold passage first, in the first three?
            "recall_at_1": float(np.mean([k < 1 for k in ranks])) if ranks else None,
            "recall_at_3": float(np.mean([k < 3 for k in ranks])) if ranks else None,
        })
    return out

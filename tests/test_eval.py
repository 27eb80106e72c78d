"""`segpress eval` for real, small: every method, both tasks, the SmolLM2
reader, one example per task, one rate (the full run is in README.md)."""

import json

import pytest

from helpers import segpress

from compressors.training import corpus
from service.evaluation import tasks
from service.evaluation.methods import METHODS
from service.evaluation.reader import contains
from service.config import Config


def test_tasks_are_fixed_by_seed_and_hold_their_answer():
    docs = corpus.split(Config().cache_dir)["dev"]
    a, b = tasks.needle(docs, 5, seed=0), tasks.needle(docs, 5, seed=0)
    assert [e.context for e in a] == [e.context for e in b]
    assert [e.meta["depth"] for e in a] == [0.1, 0.3, 0.5, 0.7, 0.9]
    for ex in a + tasks.multidoc(docs, 4, seed=0):
        assert contains(ex.context, ex.answer)
    md = tasks.multidoc(docs, 4, seed=0)
    for ex in md:
        assert len(ex.passages) == 10
        holding = [i for i, p in enumerate(ex.passages) if contains(p, ex.answer)]
        assert holding == [ex.meta["gold"]]


def test_splits_do_not_share_essays():
    parts = corpus.split(Config().cache_dir)
    names = [set(p) for p in parts.values()]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert sum(len(t.split()) for t in parts["test"].values()) >= 20_000


@pytest.mark.slow  # loads SmolLM2
def test_small_real_eval(tmp_path):
    r = segpress("eval", "--split", "dev", "--examples", "1", "--rates", "0.33",
                 "--out", str(tmp_path), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| dev | needle | segpress-llmlingua2 | 0.33 |" in r.stdout
    result = json.loads((tmp_path / "eval.json").read_text())
    assert (tmp_path / "eval.png").stat().st_size > 10_000
    summary = result["summary"]
    assert {s["method"] for s in summary} == set(METHODS)
    assert {s["task"] for s in summary} == {"needle", "multidoc"}
    for s in summary:
        if s["method"] == "none":
            assert s["ratio"] == 1.0 and s["retention"] == 1.0
        elif s["method"] in ("segpress-llmlingua2", "teacher-surprisal"):
            assert 0.2 < s["ratio"] <= 0.34, s  # held to the reader-token budget
        elif s["method"] == "segpress-llmlingua2-sentences":
            assert 0.1 < s["ratio"] <= 0.34, s  # whole sentences leave some budget unused
        elif s["method"] in ("random", "truncate"):
            assert 0.2 < s["ratio"] < 0.4, s  # word token counts: a little over when joined
        else:
            assert 0.1 < s["ratio"] < 0.7, s
    assert len(result["targets"]) == 8  # 4 per segpress method
    assert {(d["method"], d["minus"]) for d in result["differences"]} >= {
        ("segpress-llmlingua2-sentences", "none"), ("segpress-llmlingua2", "truncate")}
    assert result["reader"]["greedy"] and len(result["llmlingua2"]["fingerprint"]) == 64


def test_paired_differences_and_their_intervals():
    from service.evaluation.report import differences

    def rows(method, rate, correct):
        return [{"split": "test", "task": "needle", "method": method, "rate": rate,
                 "example": f"e{i}", "correct": c} for i, c in enumerate(correct)]

    ours = [True] * 8 + [False] * 2
    data = (rows("segpress-llmlingua2", 0.33, ours) + rows("none", 1.0, [True] * 10)
            + rows("random", 0.33, [False] * 10) + rows("random", 0.5, [True] * 10))
    got = {d["minus"]: d for d in differences(data, methods=("segpress-llmlingua2",))}
    assert set(got) == {"none", "random"}  # random at 0.33 only; none at rate 1
    assert got["random"]["difference"] == 0.8 and got["random"]["n"] == 10
    lo, hi = got["none"]["ci95"]
    assert got["none"]["difference"] == -0.2 and -0.5 <= lo < -0.2 < hi <= 0.0


def test_multidoc20_has_twenty_passages_and_one_answer():
    docs = corpus.split(Config().cache_dir)["dev"]
    exs = tasks.TASKS["multidoc20"](docs, 8, 0)
    assert [len(ex.passages) for ex in exs] == [20] * 8
    assert sorted({ex.meta["gold"] for ex in exs}) == sorted({(i * 3) % 20 for i in range(8)})
    for ex in exs:
        assert ex.answer in ex.passages[ex.meta["gold"]]
        assert sum(contains(p, ex.answer) for p in ex.passages) == 1


def test_needle_contexts_held_to_bounds():
    docs = corpus.split(Config().cache_dir)["dev"]
    count = lambda text: len(text.split())  # noqa: E731
    exs = tasks.needle(docs, 10, seed=0, words=60, fits=lambda t: 60 <= count(t) <= 75)
    assert all(60 <= count(e.context) <= 75 for e in exs)
    assert [e.meta["depth"] for e in exs[:5]] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert all(contains(e.context, e.answer) and e.meta["doc"] in docs for e in exs)
    assert [e.context for e in tasks.needle(docs, 3, seed=0)] == [e.context for e in tasks.needle(docs, 3, 0)]

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


def test_multihop_needs_the_bridge_and_the_fact():
    """The question names the person only by a role; one passage names who
    holds it, another gives that person's fact, the others the same kind of
    fact for other people. The evidence metric needs both passages' words."""
    from service.evaluation.run import evidence_kept

    docs = corpus.split(Config().cache_dir)["dev"]
    exs = tasks.TASKS["multihop"](docs, 9, 0)
    assert [e.context for e in exs] == [e.context for e in tasks.multihop(docs, 9, 0)]
    for ex in exs:
        bridge, gold, person = ex.meta["bridge"], ex.meta["gold"], ex.meta["person"]
        marker, answer = ex.meta["evidence"]
        assert len(ex.passages) == 10 and bridge != gold and answer == ex.answer
        assert [i for i, p in enumerate(ex.passages) if person in p] == sorted([bridge, gold])
        assert contains(ex.passages[bridge], marker) and contains(ex.passages[gold], answer)
        assert person not in ex.question and marker in ex.question
        assert evidence_kept(ex, ex.context)
        assert not evidence_kept(ex, ex.passages[gold])     # the fact alone is not enough
        assert not evidence_kept(ex, ex.passages[bridge])
    assert {ex.meta["kind"] for ex in exs} == {"city", "pet", "colour"}


@pytest.mark.slow  # loads SmolLM2 and complm
def test_small_real_soft_qa(tmp_path):
    """`segpress eval complm --qa-only` for real, small, on a weights file
    given by --weights: every QA condition's accuracy in [0, 1] with its
    interval, soft / text, each control from another context of another
    document, contexts within --needle-tokens, the one-line summary."""
    import shutil

    from compressors.complm import DEFAULT_WEIGHTS

    weights = tmp_path / "complm-copy.safetensors"
    shutil.copy(DEFAULT_WEIGHTS, weights)
    out = tmp_path / "qa.json"
    r = segpress("eval", "complm", "--qa-only", "--split", "dev", "--weights", str(weights),
                 "--needles", "4", "--needle-words", "60", "--needle-tokens", "60,200", "--qa-new-tokens", "8",
                 "--qa-batch", "3", "--bootstrap", "50", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["weights"] == "<complm-copy.safetensors>" and result["data"]["split"] == "dev"
    assert "continuation" not in result and "reconstruction" not in result and "prefill" not in result
    n = result["needle"]
    assert n["examples"] == 4 and set(n["conditions"]) == {"text", "soft", "control", "none"}
    for v in [*n["conditions"].values(), n["soft_over_text"]]:
        if v["value"] is not None:
            assert 0 <= v["ci95"][0] <= v["value"] <= v["ci95"][1]
    for k in ("text", "soft", "control", "none"):
        assert 0 <= n["conditions"][k]["value"] <= 1 and n["conditions"][k]["ci95"][1] <= 1
    key = {"text": "full", "soft": "ce", "control": "control", "none": "none"}
    for k, v in n["conditions"].items():
        assert v["value"] == sum(row[key[k]]["correct"] for row in n["rows"]) / 4
    text, soft = n["conditions"]["text"]["value"], n["conditions"]["soft"]["value"]
    assert n["soft_over_text"]["value"] == (soft / text if text else None)
    assert n["accuracy"] == {"full": text, "ce": soft, "none": n["conditions"]["none"]["value"]}
    rows = {row["id"]: row for row in n["rows"]}
    for row in rows.values():
        other = rows[row["control_from"]]
        assert other["id"] != row["id"] and other["doc"] != row["doc"]
        assert row["answer"] != other["answer"] and isinstance(row["control"]["text"], str)
        assert 60 <= row["context_tokens"] <= 200 and row["soft_rows"] > 0
    assert n["context_tokens"]["bounds"] == [60, 200]
    assert "summary: complm dev | QA (4 q" in r.stdout and "soft/text" in r.stdout


def test_qa_control_and_intervals():
    import numpy as np

    from service.evaluation.soft_qa import control_index, qa_bootstrap, token_bounds
    from service.evaluation.tasks import Example

    def ex(doc, text, answer):
        return Example(f"{doc}-{answer}", "needle", [text], "q?", answer, {"doc": doc})

    exs = [ex("a", "x 1234 y", "1234"), ex("a", "z", "Oslo"), ex("b", "Oslo and 1234", "red"),
           ex("c", "w", "5")]
    # Not the same document, and not a context that holds the answer.
    assert [control_index(exs, i) for i in range(4)] == [3, 3, 3, 0]
    with pytest.raises(SystemExit):
        control_index(exs[:2], 0)

    correct = {"full": np.array([1, 1, 0, 1.0]), "ce": np.array([1, 0, 0, 0.0]),
               "control": np.zeros(4), "none": np.array([0, 0, 0, 1.0])}
    got = qa_bootstrap(correct, 200, 0)
    assert got["text"]["value"] == 0.75 and got["soft"]["value"] == 0.25 and got["none"]["value"] == 0.25
    assert got["soft_over_text"]["value"] == pytest.approx(1 / 3)
    assert got["control"]["ci95"] == [0.0, 0.0]
    lo, hi = got["soft"]["ci95"]
    assert 0 <= lo < 0.25 < hi <= 1
    correct["full"] = np.zeros(4)
    assert qa_bootstrap(correct, 50, 0)["soft_over_text"] == {"value": None, "ci95": None}

    assert token_bounds("150,400") == (150, 400) and token_bounds("") is None and token_bounds("0,0") is None
    for bad in ("400,150", "150", "a,b"):
        with pytest.raises(SystemExit):
            token_bounds(bad)


def test_needle_contexts_held_to_bounds():
    docs = corpus.split(Config().cache_dir)["dev"]
    count = lambda text: len(text.split())  # noqa: E731
    exs = tasks.needle(docs, 10, seed=0, words=60, fits=lambda t: 60 <= count(t) <= 75)
    assert all(60 <= count(e.context) <= 75 for e in exs)
    assert [e.meta["depth"] for e in exs[:5]] == [0.1, 0.3, 0.5, 0.7, 0.9]
    assert all(contains(e.context, e.answer) and e.meta["doc"] in docs for e in exs)
    assert [e.context for e in tasks.needle(docs, 3, seed=0)] == [e.context for e in tasks.needle(docs, 3, 0)]


def test_segment_pooled_vectors_and_the_shared_layers(model_dir):
    """The shared-pass experiment's premise and its vectors: the classifier's
    lower 4 layers are all-MiniLM-L6-v2's exactly, and segment-pooled
    vectors have the cached values' layout (the same sentence spans as
    SentenceVectors, unit length) and stay close to each sentence alone."""
    import numpy as np

    from compressors.sentence_vectors import SentenceVectors
    from service.evaluation.shared_pass import SegmentPooled, shared_layers

    assert shared_layers(model_dir) == [0, 1, 2, 3]
    text = "The keeper lit the lamp at dusk. Oil was carried up the stairs. Storms broke the glass twice."
    (pooled,) = SegmentPooled().encode([text])
    (alone,) = SentenceVectors(engine="torch").encode([text])
    assert np.array_equal(pooled["spans"], alone["spans"]) and len(pooled["spans"]) == 3
    p, a = pooled["vectors"].astype(np.float32), alone["vectors"].astype(np.float32)
    assert np.allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-2)
    cosine = (p * a).sum(1)
    assert (cosine > 0.5).all() and (cosine < 0.999).all()  # related, not the same vectors

"""The "qa" training task (compressors/training/facts.py, soft.qa_examples):
facts kept apart from the evaluation's, examples built with the real
tokenizer, and their loss through the real decoder and the shipped complm
weights."""

import random
import re

import pytest
import torch

from compressors import models
from compressors.complm import DEFAULT_WEIGHTS
from compressors.training import facts, soft
from service.config import Config
from service.evaluation import tasks


@pytest.fixture(scope="module")
def decoder_dir():
    return models.ensure_smollm2(Config().models_dir)


def test_training_facts_share_nothing_with_the_evaluations():
    """No name, value or template word that decides an evaluation answer is
    in the training facts: the evaluation then measures looking a fact up,
    not its templates."""
    rng = random.Random(0)
    made = [facts.fact(rng) for _ in range(2000)]
    assert len({q.split()[0] + q.split()[-1] for _, q, _ in made}) >= 12  # every kind came up
    eval_words = set(tasks.FIRST + tasks.LAST + tasks.CITIES + tasks.COLOURS + tasks.PETS)
    for sentence, question, answer in made:
        text = f" {sentence} {question} ".replace(".", " ").replace("?", " ").replace("'s", " ")
        assert not set(text.split()) & eval_words, (sentence, question)
        assert not [p for p in tasks.OBJECTS + tasks.ROOMS if f" {p} " in text], (sentence, question)
        assert answer in sentence and answer not in question
    assert not {"code", "colour", "dog", "moved"} & {w.strip(".?") for s, q, _ in made for w in q.split()}


def test_name_facts_are_many_and_spell_no_evaluation_value():
    """Made-up names (facts.name_fact) cannot be guessed from a short list,
    spell none of the evaluation's names or values, and leave the facts of
    a seed as they were when no name is asked for (the shipped weights'
    cards name commands that must still make the same examples)."""
    rng = random.Random(0)
    assert [facts.fact(rng)[2] for _ in range(3)] == ["1934", "500", "drums"]
    rng = random.Random(1)
    named = [facts.name_fact(rng) for _ in range(2000)]
    assert len({a for _, _, a in named}) > 1800  # hardly a value twice
    kinds = ("village", "nickname", "ferry", "horse", "password", "band")
    assert all(any(k in q for _, q, _ in named) for k in kinds)  # every kind came up
    for sentence, question, answer in named:
        assert answer in sentence and answer not in question
    syllable = "(%s)(%s)(%s)?" % tuple("|".join(sorted(xs, key=len, reverse=True)) for xs in
                                       (facts.ONSETS, facts.VOWELS, [c for c in facts.CODAS if c]))
    spellable = re.compile(f"({syllable}){{2,3}}")
    values = tasks.FIRST + tasks.LAST + tasks.CITIES + tasks.COLOURS + tasks.PETS
    values += [w for p in tasks.OBJECTS + tasks.ROOMS for w in p.split()]
    assert {v.lower() for v in values if spellable.fullmatch(v.lower())} <= facts._EVAL_WORDS
    assert not {a.lower() for _, _, a in named} & facts._EVAL_WORDS
    always = [facts.fact(rng, names=1.0)[2].lower() for _ in range(50)]
    assert all(spellable.fullmatch(a) for a in always)


def test_insert_puts_the_fact_between_sentences():
    text = "One thing. Two things? Three things!"
    seen = set()
    for seed in range(40):
        out = facts.insert(random.Random(seed), text, "A fact.")
        assert out.replace("A fact.", "").split() == text.split()
        seen.add(out.index("A fact."))
    assert len(seen) == 4  # before, between each pair, after


def test_qa_examples_are_fixed_by_their_seed_and_hold_their_answer(decoder_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(decoder_dir)
    docs = soft.documents(Config().cache_dir, "dev", ("essays",))
    a = soft.qa_examples(docs, tok, 6, 3, 30, 60, 20)
    b = soft.qa_examples(docs, tok, 6, 3, 30, 60, 20)
    assert a == b and soft.qa_examples(docs, tok, 6, 4, 30, 60, 20) != a
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for ex in a:
        answer = tok.decode(ex["answer"][:-1])
        assert ex["task"] == "qa" and ex["answer"][-1] == end and answer in ex["context"]
        assert sum(len(s) for s in ex["segments"]) >= len(ex["context_ids"]) - len(ex["segments"])
        assert ex["question"] in tok.decode(ex["after"]) + tok.decode(ex["before"])
        assert tok.decode(ex["after"]).endswith("<|im_start|>assistant\n")
        assert soft.targets_of(ex) == ex["answer"]
        assert soft.teacher_ids(ex, 0) == ex["before"] + ex["context_ids"] + ex["after"]


@pytest.mark.slow  # loads SmolLM2
@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="no trained complm weights")
def test_qa_loss_reaches_the_encoder_and_the_teacher_reads_the_text(decoder_dir):
    """A qa batch's loss is on the answer tokens after the chat prompt with
    the rows and <cont> in it, and its gradient reaches the encoder's head;
    the dev report scores the answers from the text and from the rows."""
    from compressors.complm_model import load_model

    model, tok = load_model(decoder_dir, DEFAULT_WEIGHTS)
    bos = tok.convert_tokens_to_ids("<|endoftext|>")
    docs = soft.documents(Config().cache_dir, "dev", ("essays",))
    batch = soft.qa_examples(docs, tok, 4, 0, 30, 50, model.config.segment_tokens)
    loss, per_example, _ = soft.batch_loss(model, model.concept_embeddings, batch, bos, False, distill=1.0)
    loss.backward()
    assert torch.isfinite(loss) and model.head.weight.grad.abs().sum() > 0
    ex = batch[0]
    rows = torch.cat(model.concept_embeddings(ex["segments"]))
    p = soft.student_prefix(model, bos, ex, rows.detach())
    assert p.shape[0] == len(ex["before"]) + rows.shape[0] + 1 + len(ex["after"])
    torch.testing.assert_close(p[len(ex["before"]) + rows.shape[0]], model.task("cont").detach())
    plain = soft.examples(docs, tok, 2, 0, 30, 30, 8, model.config.segment_tokens)
    report = soft.dev_report(model, plain + batch, {"ces": model.concept_embeddings}, bos, False)
    assert set(report["qa_text"]) == set(report["ces"]["qa"]) == {"loss", "token_accuracy"}
    assert 0 < report["qa_text"]["loss"] < 20 and 0 <= report["ces"]["qa"]["token_accuracy"] <= 1
    assert report["ces"]["qa"]["loss"] == pytest.approx(per_example.mean().item(), rel=1e-4)

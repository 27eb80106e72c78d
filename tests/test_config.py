"""Configuration errors are usage errors (issue 22, item 10): a boolean
takes only true/false/1/0/yes/no, a setting with choices only one of them,
from a flag or from the environment; `segpress` exits with status 2 and a
message that names the setting and what it accepts, never a traceback."""

import dataclasses
import os

import pytest
from helpers import segpress

from service import config as cfg


def field(name):
    return next(f for f in dataclasses.fields(cfg.Config) if f.name == name)


@pytest.mark.parametrize("raw,value", [("true", True), ("TRUE", True), ("1", True), ("yes", True),
                                       ("false", False), ("False", False), ("0", False),
                                       ("no", False), (" no ", False)])
def test_booleans_take_the_six_words(raw, value):
    assert cfg.from_args(env={"SEGPRESS_SELECTION": raw}).selection is value


@pytest.mark.parametrize("raw", ["flase", "on", "off", "", "2", "y", "enabled"])
def test_any_other_boolean_is_an_error_naming_the_variable(raw):
    with pytest.raises(cfg.ConfigError) as e:
        cfg.from_args(env={"SEGPRESS_SELECTION": raw})
    assert str(e.value) == f"SEGPRESS_SELECTION={raw!r}: expected true, false, 1, 0, yes or no"


def test_choices_are_checked_and_normalised():
    c = cfg.from_args(env={"SEGPRESS_ENGINE": "OpenVINO-int8", "SEGPRESS_LOG_LEVEL": "debug"})
    assert (c.engine, c.log_level) == ("openvino-int8", "DEBUG")
    with pytest.raises(cfg.ConfigError, match="SEGPRESS_ENGINE='openvino8': expected one of auto, "
                                              "torch, onnx, onnx-int8, openvino, openvino-int8"):
        cfg.from_args(env={"SEGPRESS_ENGINE": "openvino8"})
    with pytest.raises(cfg.ConfigError, match="SEGPRESS_MAX_QUEUE='lots': expected an integer"):
        cfg.from_args(env={"SEGPRESS_MAX_QUEUE": "lots"})


def test_compressors_is_a_list_of_registered_names():
    from compressors.registry import REGISTRY

    assert field("compressors").metadata["list_of"] == tuple(REGISTRY)
    assert cfg.from_args(env={"SEGPRESS_COMPRESSORS": " complm, ARC "}).compressors == "complm,arc"
    for raw in ("complm,foo", "", ",", "arc;complm"):
        with pytest.raises(cfg.ConfigError, match="expected a comma list of llmlingua2, complm, arc"):
            cfg.from_args(env={"SEGPRESS_COMPRESSORS": raw})


def test_weights_are_pairs_of_the_compressors_with_weights(tmp_path):
    from compressors.complm_model import DEFAULT_WEIGHTS as COMPLM
    from compressors.arc_model import DEFAULT_WEIGHTS as ARC
    from compressors.artifacts import ModelError
    from compressors.registry import REGISTRY, weights_path

    assert field("weights").metadata["pairs_of"] == tuple(n for n, e in REGISTRY.items() if e.weights)
    assert (REGISTRY["complm"].weights, REGISTRY["arc"].weights) == (COMPLM.name, ARC.name)
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"x")
    config = cfg.from_args(env={"SEGPRESS_WEIGHTS": f" ARC = {mine} "})
    assert config.weights == f"arc={mine}"
    assert (weights_path("arc", config), weights_path("complm", config)) == (mine, COMPLM)
    for raw in ("complm", "foo=x", "arc=", "arc=a,arc=b"):
        with pytest.raises(cfg.ConfigError, match="expected a comma list of name=path, each name once, "
                                                   "of complm, arc"):
            cfg.from_args(env={"SEGPRESS_WEIGHTS": raw})
    with pytest.raises(ModelError, match="pass --weights complm=PATH"):
        weights_path("complm", cfg.from_args(env={"SEGPRESS_WEIGHTS": f"complm={tmp_path / 'none'}"}))


def test_the_choices_are_what_the_engines_take():
    from compressors import engines, sentence_vectors

    assert set(field("engine").metadata["choices"]) == {"auto", *engines.ENGINES}
    assert set(field("sentence_engine").metadata["choices"]) == set(sentence_vectors.ENGINES)


@pytest.mark.parametrize("args,env,words", [
    (["serve", "--selection", "flase"], {}, "argument --selection: 'flase': expected true, false"),
    (["serve", "--engine", "fast"], {}, "argument --engine: 'fast': expected one of auto, torch"),
    (["serve"], {"SEGPRESS_SELECTION": "flase"}, "SEGPRESS_SELECTION='flase': expected true, false"),
    (["serve"], {"SEGPRESS_ENGINE": "fast"}, "SEGPRESS_ENGINE='fast': expected one of auto, torch"),
    (["serve"], {"SEGPRESS_LOG_FORMAT": "xml"}, "SEGPRESS_LOG_FORMAT='xml': expected one of text, json"),
    (["compress", "sample", "--engine", "fast"], {}, "argument --engine: 'fast'"),
    (["serve", "--compressors", "llmlingua2,foo"], {}, "argument --compressors: 'llmlingua2,foo': expected a "
                                                         "comma list of llmlingua2, complm, arc"),
])
def test_the_cli_makes_them_usage_errors(args, env, words):
    r = segpress(*args, env={**os.environ, **env}, timeout=60)
    assert r.returncode == 2
    assert words in r.stderr and "Traceback" not in r.stderr


def test_sentence_vectors_come_from_the_classifier_where_one_is_loaded(llmlingua2):
    """--sentence-vectors classifier (the default) pools them from the
    llmlingua2 instance that serves; minilm, or a server without llmlingua2,
    embeds each sentence with the sentence model."""
    from compressors.sentence_vectors import ClassifierSentences, SentenceVectors
    from service.assemble import sentence_vectors

    config = cfg.Config(sentence_engine="torch")
    pooled = sentence_vectors(config, {"llmlingua2": llmlingua2})
    assert isinstance(pooled, ClassifierSentences) and pooled.classifier is llmlingua2
    assert pooled.cache_id.startswith(llmlingua2.cache_id + ":")
    assert type(sentence_vectors(dataclasses.replace(config, sentence_vectors="minilm"),
                                 {"llmlingua2": llmlingua2})) is SentenceVectors
    assert type(sentence_vectors(config, {"complm": object()})) is SentenceVectors

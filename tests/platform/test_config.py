"""Config validation: bad values name the field, the value and what is allowed; files and --set parse."""

from __future__ import annotations

import pytest

from gradprom.platform.config import build_config, load_config_file, merge, parse_set_option, save_config
from gradprom.platform.errors import ConfigError


def test_defaults_are_valid_and_round_trip(tmp_path):
    cfg = build_config()
    assert cfg.gradprom.strategy == "gradprom" and cfg.gradprom.tau == 0.0 and cfg.recognizer_name == "resnet"
    save_config(cfg, tmp_path / "c.yaml")
    again = build_config(load_config_file(tmp_path / "c.yaml"))
    assert again == cfg


@pytest.mark.parametrize("data,expected", [
    ({"gradprom": {"tau": 1.5}}, ["gradprom.tau", "1.5", "less than or equal to 1"]),
    ({"gradprom": {"granularity": "neuron"}}, ["gradprom.granularity", "'neuron'", "'global' or 'layer'"]),
    ({"gradprom": {"strategy": "magic"}}, ["gradprom.strategy", "'magic'", "torchjd:NAME"]),
    ({"gradprom": {"lambda_e": 0}}, ["gradprom.lambda_e", "greater than 0"]),
    ({"gradprom": {"gate_space": "output", "strategy": "pcgrad"}}, ["gate_space: output", "pcgrad"]),
    ({"gradprom": {"gate_space": "output", "granularity": "layer"}}, ["granularity: layer"]),
    ({"gradprom": {"granularity": "layer", "strategy": "joint"}}, ["granularity: layer", "'joint'"]),
    ({"gradprom": {"recognizer_mode": "frozen"}}, ["recognizer_checkpoint"]),
    ({"task": "detection"}, ["task", "'detection'", "'classification' or 'segmentation'"]),
    ({"task": "segmentation", "model": {"recognizer": "resnet"}}, ["model.recognizer: resnet", "unet"]),
    ({"optim": {"epochs": 0}}, ["optim.epochs", "greater than or equal to 1"]),
    ({"optim": {"lr": "fast"}}, ["optim.lr", "'fast'", "valid number"]),
    ({"data": {"batch_size": -2}}, ["data.batch_size", "-2"]),
    ({"model": {"enhancer_channels": [16, 0]}}, ["enhancer_channels", "positive"]),
    ({"run": {"device": "tpu"}}, ["run.device", "'tpu'"]),
    ({"optim": {"nope": 1}}, ["unknown config field `optim.nope`"]),
    ({"bogus_section": {}}, ["unknown config field `bogus_section`"]),
])
def test_bad_values_name_field_value_and_allowed(data, expected):
    with pytest.raises(ConfigError) as e:
        build_config(data, source="test")
    msg = str(e.value)
    assert msg.startswith("Invalid configuration (test)")
    for part in expected:
        assert part in msg, (part, msg)
    assert "\n" not in msg  # one paragraph


def test_negative_tau_is_allowed_for_search():
    assert build_config({"gradprom": {"tau": -0.3}}).gradprom.tau == -0.3


@pytest.mark.parametrize("text,expected", [
    ("gradprom.tau=0.2", {"gradprom": {"tau": 0.2}}),
    ("model.enhancer_channels=[8, 16]", {"model": {"enhancer_channels": [8, 16]}}),
    ("run.name=null", {"run": {"name": None}}),
    ("data.degradation=blur:sigma=1", {"data": {"degradation": "blur:sigma=1"}}),
])
def test_set_option(text, expected):
    assert parse_set_option(text) == expected


def test_set_option_without_equals():
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_set_option("gradprom.tau")


def test_merge_is_recursive():
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


@pytest.mark.parametrize("content,expected", [
    (None, "does not exist"),
    ("gradprom: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "mapping of sections"),
])
def test_config_file_errors(tmp_path, content, expected):
    p = tmp_path / "c.yaml"
    if content is not None:
        p.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        load_config_file(p)


def test_empty_config_file_means_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("")
    assert build_config(load_config_file(p)) == build_config()


@pytest.mark.parametrize("preset,fields", [
    ("gradprom_layer", {"granularity": "layer"}), ("gradprom_output", {"gate_space": "output"}),
    ("gradprom_matched", {"scale": "match"}), ("gradprom_separate", {"moments": "separate"}),
    ("gradprom_precond", {"gate_metric": "preconditioned"}),
])
def test_grid_preset_names_expand_into_the_fields_they_stand_for(preset, fields):
    g = build_config({"gradprom": {"strategy": preset}}).gradprom
    assert g.strategy == "gradprom" and all(getattr(g, k) == v for k, v in fields.items())


@pytest.mark.parametrize("data,expected", [
    ({"gradprom": {"strategy": "gradprom_layer", "granularity": "global"}}, ["gradprom_layer", "granularity: layer",
                                                                             "strategy: gradprom"]),
    ({"gradprom": {"strategy": "pcgrad", "scale": "match"}}, ["scale: match", "'pcgrad'"]),
    ({"gradprom": {"moments": "separate", "gate_space": "output"}}, ["moments: separate", "gate_space: parameter"]),
    ({"gradprom": {"gate_metric": "preconditioned"}, "optim": {"optimizer": "sgd"}}, ["gate_metric", "adam"]),
    ({"optim": {"momentum": 0.9}}, ["optim.momentum", "sgd"]),
    ({"gradprom": {"scale": "match", "scale_granularity": "layer"}},
     ["scale_granularity: layer", "granularity: layer"]),
    ({"optim": {"optimizer": "lion"}}, ["optim.optimizer", "'lion'"]),
    ({"gradprom": {"scale": "double"}}, ["gradprom.scale", "'double'", "'match'"]),
])
def test_gate_variant_mistakes_name_the_fields(data, expected):
    with pytest.raises(ConfigError) as e:
        build_config(data)
    for part in expected:
        assert part in str(e.value)

"""Config fields are documented once (their pydantic description) and every command's help is generated from
them: defaults and choices shown, a mistyped field gets "did you mean", an error names the flag it came from."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from pydantic import BaseModel

from gradprom.cli import TRAIN_FLAGS, build_parser
from gradprom.config_flags import config_field
from gradprom.federated.cli import FLAGS as FED_FLAGS
from gradprom.federated.config import FedConfig
from gradprom.platform.config import Config, annotated_defaults, build_config
from gradprom.platform.errors import ConfigError


def leaf_fields(model: type[BaseModel], prefix: str = ""):
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from leaf_fields(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


@pytest.mark.parametrize("model", [Config, FedConfig])
def test_every_field_has_a_description(model):
    missing = [name for name, info in leaf_fields(model) if not (info.description or "").strip()]
    assert missing == []


def test_every_flag_names_a_real_field():
    for table in (TRAIN_FLAGS, FED_FLAGS):
        for flag, entry in table.items():
            field = entry if isinstance(entry, str) else entry[0]
            assert config_field(field) is not None, (flag, field)


def _help(*cmd: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    p = sub.choices[cmd[0]]
    return p.format_help()


def test_train_help_shows_defaults_choices_and_descriptions():
    text = " ".join(_help("train").split())
    assert "--epochs N number of epochs (default: 10) [optim.epochs]" in text
    assert "--granularity {global,layer}" in text and "(default: global)" in text
    assert "--device {auto,cpu,cuda}" in text
    assert "EPOCH" not in text  # no placeholders made of the flag's last word


def test_federate_names_the_aggregation_and_the_gate_apart():
    text = " ".join(_help("federate").split())
    assert "--aggregation {fedavg,fedprox,fedadam,fedyogi}" in text and "[federated.strategy]" in text
    assert "--strategy NAME" in text and "[gradprom.strategy]" in text


def test_annotated_defaults_is_a_config_that_changes_nothing():
    text = annotated_defaults()
    assert build_config(yaml.safe_load(text)) == build_config({})
    assert "# gate threshold" in text


@pytest.mark.parametrize("field, close", [("gradprom.tua", "gradprom.tau"), ("optim.epoch", "optim.epochs"),
                                          ("data.sourc", "data.source")])
def test_mistyped_field_gets_did_you_mean(field, close):
    section, name = field.split(".")
    with pytest.raises(ConfigError, match=f"did you mean `{close}`"):
        build_config({section: {name: 1}})


def test_error_names_the_flag_it_came_from_and_cuts_long_values():
    proc = subprocess.run([sys.executable, "-m", "gradprom.cli", "train", "--tau", "3"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "command line: --tau" in proc.stderr and "(defaults)" not in proc.stderr
    with pytest.raises(ConfigError) as e:
        build_config({"seed": "x" * 100_000})
    assert len(str(e.value)) < 1000


def test_config_command_prints_the_commented_defaults():
    proc = subprocess.run([sys.executable, "-m", "gradprom.cli", "config"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and build_config(yaml.safe_load(proc.stdout)) == build_config({})

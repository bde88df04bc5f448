"""ray_cluster.yaml: valid YAML that Ray's own cluster-launcher checks accept, with the fields `ray up` needs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

YAML = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"


@pytest.fixture
def config() -> dict:
    return yaml.safe_load(YAML.read_text())


def test_the_launcher_accepts_it(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # raises on a schema violation
    assert prepared["provider"]["type"] == "local"
    assert prepared["max_workers"] == len(config["provider"]["worker_ips"])


def test_fields_for_an_on_premise_cluster(config):
    assert config["cluster_name"]
    assert config["provider"]["head_ip"] and isinstance(config["provider"]["worker_ips"], list)
    assert config["auth"]["ssh_user"] and config["auth"]["ssh_private_key"]
    assert any("scripts/setup.sh" in c for c in config["setup_commands"])  # installs the project
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])
    # the commented cloud section is there to be filled in, not active
    assert "# provider:" in YAML.read_text() and "type: aws" in YAML.read_text()


def test_a_missing_head_is_rejected(config):
    from ray.autoscaler._private.util import prepare_config

    del config["provider"]["head_ip"]
    with pytest.raises(Exception, match="head_ip"):
        prepare_config(config)

"""The gate variants as categorical dimensions of Tune's search space (no Ray cluster needed)."""

from __future__ import annotations

import pytest

from gradprom.platform.config import build_config
from gradprom.platform.errors import ConfigError
from gradprom.tuning.space import apply_params, build_spec, default_point, fixed_values, param_space, param_space_names


def test_variant_choices_are_searched_fixed_or_rejected():
    spec = build_spec({"scale": ["none", "match"], "moments": ["shared", "separate"], "gate_metric": ["preconditioned"],
                       "lambda_e": 1.0, "lambda_r": 0.1, "lr": 1e-3})
    space = param_space(spec)
    assert set(space) == {"tau", "scale", "moments"}  # tau's default range is searched, the fixed ones are not
    assert sorted(space["scale"].categories) == ["match", "none"]
    assert fixed_values(spec)["gate_metric"] == "preconditioned"
    assert param_space_names(spec) == ["tau", "scale", "moments"]
    point = default_point(spec, build_config({"gradprom": {"moments": "separate"}}))
    assert point["scale"] == "none" and point["moments"] == "separate"
    trial = apply_params({"gradprom": {"strategy": "gradprom"}}, {"scale": "match", "moments": "separate",
                                                                  "gate_metric": "preconditioned"})
    g = build_config(trial).gradprom
    assert (g.scale, g.moments, g.gate_metric) == ("match", "separate", "preconditioned")
    with pytest.raises(ConfigError, match="tune.scale"):
        build_spec({"scale": ["double"]})
    with pytest.raises(ConfigError, match="tune.moments"):
        build_spec({"moments": []})


def test_a_preset_is_a_valid_strategy_choice():
    spec = build_spec({"strategy": ["gradprom", "gradprom_separate"]})
    g = build_config(apply_params({}, {"strategy": "gradprom_separate"})).gradprom
    assert spec.strategy == ["gradprom", "gradprom_separate"] and g.moments == "separate"

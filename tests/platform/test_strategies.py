"""Strategies: shared properties over typical pairs, the gate rule, per-layer decisions, torchjd adapters,
representations and a values table (torchjd's testing habits)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradprom.platform.errors import ConfigError
from gradprom.platform.strategies import (
    CosineWeighted,
    EnhanceOnly,
    GradProm,
    Joint,
    ParamLayout,
    TorchJD,
    cosine,
    make_strategy,
    parse_strategy,
    segment_cosines,
)

from ._inputs import DEVICE, ones_, pair_with_cosine, tensor_, typical_pairs, zeros_

STRATEGIES = [GradProm(0.0), GradProm(0.3), GradProm(0.0, "layer"), Joint(), EnhanceOnly(), CosineWeighted(),
              CosineWeighted("layer"), TorchJD("PCGrad", label="pcgrad"), TorchJD("UPGrad"), TorchJD("MGDA")]
LAYOUT = ParamLayout(["a", "b", "c"], [100, 57, 100])


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
@pytest.mark.parametrize("name,g_e,g_r", typical_pairs(), ids=[p[0] for p in typical_pairs()])
def test_expected_structure(strategy, name, g_e, g_r):
    d = strategy(g_e, g_r, LAYOUT)
    assert d.update.shape == g_e.shape
    assert torch.isfinite(d.update).all()
    assert -1.0 - 1e-6 <= float(d.cos) <= 1.0 + 1e-6


@pytest.mark.parametrize("strategy", [GradProm(0.0), GradProm(0.5), GradProm(0.0, "layer"), GradProm(0.2, "layer"),
                                      CosineWeighted(), CosineWeighted("layer"), EnhanceOnly()], ids=repr)
@pytest.mark.parametrize("name,g_e,g_r", typical_pairs(), ids=[p[0] for p in typical_pairs()])
def test_descent_guarantee_on_typical_pairs(strategy, name, g_e, g_r):
    """<d, g_e> >= |g_e|^2 for every gate with tau >= 0 (the paper's theorem)."""
    d = strategy(g_e.double(), g_r.double(), LAYOUT).update
    lhs, rhs = float(d @ g_e.double()), float(g_e.double() @ g_e.double())
    assert lhs >= rhs - 1e-9 * max(1.0, abs(rhs))


@settings(max_examples=60, deadline=None)
@given(tau=st.floats(0.0, 1.0), cos=st.floats(-1.0, 1.0), seed=st.integers(0, 10_000),
       log_scale=st.floats(-6, 6), layer=st.booleans())
def test_descent_guarantee_property(tau, cos, seed, log_scale, layer):
    g_e, g_r = pair_with_cosine(cos, n=257, seed=seed, scale_r=10.0 ** log_scale)
    # perturb so per-layer cosines differ from the global one
    g_r = g_r + 0.3 * torch.randn(257, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE) * g_r.norm() / 16
    s = GradProm(tau, "layer" if layer else "global")
    d = s(g_e.double(), g_r.double(), LAYOUT).update
    ge = g_e.double()
    assert float(d @ ge) >= float(ge @ ge) * (1 - 1e-9) - 1e-12


@pytest.mark.parametrize("tau", [0.0, 0.25, 0.5, -0.25])
@pytest.mark.parametrize("c", [-0.9, -0.3, 0.0, 0.1, 0.3, 0.9])
def test_gate_opens_above_tau_and_closes_at_or_below(tau, c):
    g_e, g_r = pair_with_cosine(c, seed=3)
    d = GradProm(tau)(g_e, g_r)
    opened = float(d.cos) > tau
    assert float(d.gate_open) == (1.0 if opened else 0.0)
    expected = g_e + g_r if opened else g_e
    torch.testing.assert_close(d.update, expected)


def test_gate_at_exactly_tau_is_closed():
    g_e = tensor_([1.0, 0.0])
    g_r = tensor_([0.0, 1.0])  # cos = 0 exactly
    assert float(GradProm(0.0)(g_e, g_r).gate_open) == 0.0
    torch.testing.assert_close(GradProm(0.0)(g_e, g_r).update, g_e)


@pytest.mark.parametrize("tau", [0.0, -0.5, -1.0])
def test_zero_norm_gradient_gives_cos_zero_and_closes(tau):
    z = zeros_(10)
    g = ones_(10)
    for g_e, g_r in [(z, g), (g, z), (z, z)]:
        d = GradProm(tau)(g_e, g_r)
        assert float(d.cos) == 0.0
        assert float(d.gate_open) == 0.0  # closed even when tau < 0 = cos
        torch.testing.assert_close(d.update, g_e)
    layout = ParamLayout(["a", "b"], [5, 5])
    g_r = torch.cat([zeros_(5), ones_(5)])
    d = GradProm(-0.5, "layer")(ones_(10), g_r, layout)
    torch.testing.assert_close(d.layer_open, tensor_([0.0, 1.0]))


def test_layer_mode_decides_per_tensor():
    layout = ParamLayout(["w1", "w2", "w3"], [3, 2, 4])
    g_e = tensor_([1.0, 0, 0, 1, 0, 1, 1, 0, 0])
    g_r = tensor_([1.0, 0, 0, -1, 0, 0, 0, 1, 0])  # layer1 aligned, layer2 opposed, layer3 orthogonal
    torch.testing.assert_close(segment_cosines(g_e, g_r, layout), tensor_([1.0, -1.0, 0.0]))
    d = GradProm(0.0, "layer")(g_e, g_r, layout)
    torch.testing.assert_close(d.layer_open, tensor_([1.0, 0.0, 0.0]))
    torch.testing.assert_close(d.update, tensor_([2.0, 0, 0, 1, 0, 1, 1, 0, 0]))
    assert float(d.gate_open) == pytest.approx(1 / 3)


def test_layer_mode_needs_layout():
    with pytest.raises(ValueError, match="layout"):
        GradProm(0.0, "layer")(ones_(3), ones_(3))


def test_cosine_weighted_weights_by_positive_cosine():
    g_e, g_r = pair_with_cosine(0.4, seed=5)
    d = CosineWeighted()(g_e, g_r)
    torch.testing.assert_close(d.update, g_e + float(d.cos) * g_r)
    g_e, g_r = pair_with_cosine(-0.4, seed=5)
    torch.testing.assert_close(CosineWeighted()(g_e, g_r).update, g_e)


def test_pcgrad_is_torchjds_projection_for_two_gradients():
    """For a conflicting pair PCGrad projects each onto the other's normal plane and sums (Yu et al. 2020)."""
    g_e, g_r = pair_with_cosine(-0.5, seed=2)
    pe = g_e - (g_e @ g_r) / (g_r @ g_r) * g_r
    pr = g_r - (g_r @ g_e) / (g_e @ g_e) * g_e
    torch.testing.assert_close(make_strategy("pcgrad")(g_e, g_r).update, pe + pr, atol=1e-5, rtol=1e-5)
    assert math.isnan(float(make_strategy("pcgrad")(g_e, g_r).gate_open))


# one table of pinned outputs for a fixed, hand-checkable pair
_G_E = tensor_([1.0, 0.0])
_G_R = tensor_([1.0, 1.0])  # cos = 1/sqrt(2) ~ 0.7071
VALUES = [
    (GradProm(0.0), [2.0, 1.0]),
    (GradProm(0.8), [1.0, 0.0]),
    (Joint(), [2.0, 1.0]),
    (EnhanceOnly(), [1.0, 0.0]),
    (CosineWeighted(), [1.0 + 2 ** -0.5, 2 ** -0.5]),
    (TorchJD("Mean"), [1.0, 0.5]),
    (TorchJD("Sum"), [2.0, 1.0]),
    (TorchJD("PCGrad", label="pcgrad"), [2.0, 1.0]),  # no conflict: PCGrad sums
]


@pytest.mark.parametrize("strategy,expected", VALUES, ids=[repr(v[0]) for v in VALUES])
def test_values(strategy, expected):
    torch.testing.assert_close(strategy(_G_E, _G_R).update, tensor_(expected), atol=1e-5, rtol=1e-5)


def test_representations():
    assert repr(GradProm(0.2, "layer")) == "GradProm(tau=0.2, granularity='layer')"
    assert str(GradProm(0.2)) == "GradProm (τ=0.2)"
    assert repr(Joint()) == "Joint()" and str(Joint()) == "joint"
    assert "UPGrad" in repr(make_strategy("torchjd:UPGrad"))
    assert repr(CosineWeighted()) == "CosineWeighted(granularity='global')"


@pytest.mark.parametrize("spec,key,label", [
    ("gradprom", "gradprom", "GradProm (τ=0)"), ("joint", "joint", "joint"), ("enhance_only", "enhance_only",
     "enhance only"), ("cosine_weighted", "cosine_weighted", "cosine-weighted"), ("pcgrad", "pcgrad", "PCGrad"),
    ("torchjd:UPGrad", "torchjd:UPGrad", "UPGrad"),
])
def test_str_is_the_legend_label_and_name_the_config_key(spec, key, label):
    s = make_strategy(spec)
    assert s.name == key and str(s) == label
    assert parse_strategy(s.name)[0] == spec  # the config key round-trips


def test_registry_derives_capabilities_from_the_classes():
    from gradprom.cli import DEMO_STRATEGIES, TRAIN_FLAGS
    from gradprom.platform import strategies as S

    assert S.LAYER_STRATEGIES == {n for n, c in S.REGISTRY.items() if c.supports_layer} == {"gradprom",
                                                                                             "cosine_weighted"}
    assert S.OUTPUT_SPACE_STRATEGIES == {"gradprom", "joint", "enhance_only", "cosine_weighted"}
    assert all(c.help and c.name == n for n, c in S.REGISTRY.items())
    assert DEMO_STRATEGIES == list(S.REGISTRY)
    assert all(n in TRAIN_FLAGS["strategy"][1] for n in (*S.REGISTRY, *S.STRATEGY_PRESETS))


def test_platform_exports_the_strategies_lazily_and_without_torch():
    import subprocess
    import sys

    code = ("import sys, gradprom.platform as p, gradprom.cli\n"
            "assert 'torch' not in sys.modules, 'import pulled in torch'\n"
            "assert p.GradProm.gating and p.make_strategy is not None\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("spec,ok", [
    ("gradprom", True), ("joint", True), ("enhance_only", True), ("cosine_weighted", True), ("pcgrad", True),
    ("torchjd:UPGrad", True), ("torchjd:MGDA", True), ("torchjd:GradVac", True), ("torchjd:GradVac:beta=0.3", True),
    ("torchjd:ConFIG", True), ("torchjd:CAGrad:c=0.5", False),  # CAGrad needs torchjd's cagrad extra
    ("torchjd:NotAThing", False), ("torchjd:CAGrad", False), ("torchjd:Aggregator", False), ("bogus", False),
    ("torchjd:GradVac:0.5", False),
])
def test_parse_strategy_table(spec, ok):
    if ok:
        parse_strategy(spec)
        s = make_strategy(spec)
        g_e, g_r = pair_with_cosine(-0.3, seed=1)
        assert torch.isfinite(s(g_e, g_r).update).all()
    else:
        with pytest.raises(ConfigError, match="gradprom.strategy"):
            parse_strategy(spec)


def test_bad_pair_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        GradProm()(ones_(3), ones_(4))
    with pytest.raises(ValueError, match="1-D"):
        Joint()(ones_(2, 2), ones_(2, 2))


def test_tau_out_of_range_raises():
    with pytest.raises(ValueError, match="tau"):
        GradProm(1.5)


def test_cosine_of_zero_is_zero():
    assert float(cosine(zeros_(4), ones_(4))) == 0.0

"""Degradations: each step has the statistics it claims; specs compose, seed and fail with clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from gradprom.platform.data.degradations import (
    SHORTHANDS,
    Blur,
    Degradation,
    Downsample,
    Gaussian,
    Poisson,
    parse_degradation,
)
from gradprom.platform.errors import ConfigError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def const(value: float = 0.5, size: int = 256, channels: int = 1) -> torch.Tensor:
    return torch.full((channels, size, size), value, dtype=torch.float32)


# ---------------------------------------------------------------- Gaussian
@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3])
def test_gaussian_noise_has_the_requested_sigma(sigma):
    x = const(0.5)
    y = Gaussian(sigma)(x, gen(1))
    noise = (y - x).double()
    assert y.shape == x.shape and y.dtype == x.dtype
    assert noise.std().item() == pytest.approx(sigma, rel=0.03)
    assert abs(noise.mean().item()) < 4 * sigma / math.sqrt(noise.numel())


def test_gaussian_noise_is_not_clipped():
    x = const(0.0, size=64)
    y = parse_degradation("gaussian:sigma=0.1")(x, gen(0))
    assert y.min() < 0.0  # noise keeps its statistics at the intensity bounds


# ---------------------------------------------------------------- Poisson
@pytest.mark.parametrize("value,dose", [(0.5, 100.0), (0.2, 50.0), (0.8, 1000.0)])
def test_poisson_preserves_mean_and_has_variance_x_over_dose(value, dose):
    x = const(value)
    y = Poisson(dose)(x, gen(2)).double()
    n = y.numel()
    var = value / dose
    assert abs(y.mean().item() - value) < 5 * math.sqrt(var / n)
    assert y.var().item() == pytest.approx(var, rel=0.05)


def test_lowdose_shorthand_is_poisson_dose_100():
    d = parse_degradation("lowdose")
    assert len(d.steps) == 1 and isinstance(d.steps[0], Poisson) and d.steps[0].dose == 100.0
    y = d(const(0.5), gen(3)).double()
    assert y.var().item() == pytest.approx(0.5 / 100, rel=0.05)


# ---------------------------------------------------------------- Blur
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.0])
def test_blur_kernel_sums_to_one_and_is_symmetric(sigma):
    k = Blur(sigma).kernel()
    assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(k, k.flip(0))
    assert k.numel() == 2 * max(1, math.ceil(3 * sigma)) + 1
    assert int(k.argmax()) == (k.numel() - 1) // 2


@pytest.mark.parametrize("sigma", [1.0, 1.5, 2.0, 3.0])
def test_blurred_delta_has_spatial_std_sigma(sigma):
    size = 41
    x = torch.zeros(1, size, size)
    x[0, size // 2, size // 2] = 1.0
    y = Blur(sigma)(x, gen()).double()[0]
    assert y.sum().item() == pytest.approx(1.0, abs=1e-5)  # energy kept
    t = torch.arange(size, dtype=torch.float64) - size // 2
    py, px = y.sum(1), y.sum(0)  # marginals
    for p in (py, px):
        assert (p * t).sum().item() == pytest.approx(0.0, abs=1e-6)  # centred
        std = math.sqrt((p * t * t).sum().item())
        assert std == pytest.approx(sigma, rel=0.05)


@pytest.mark.parametrize("sigma", [0.7, 2.0, 10.0])
def test_blur_keeps_a_constant_image_constant(sigma):
    x = const(0.37, size=32, channels=3)
    y = Blur(sigma)(x, gen())
    assert y.shape == x.shape
    assert torch.allclose(y, x, atol=1e-6)


def test_blur_zero_sigma_is_identity():
    x = torch.rand(1, 16, 16, generator=gen(0))
    assert torch.equal(parse_degradation("blur:sigma=0")(x, gen()), x)


def test_blur_wider_than_a_small_image_does_not_crash():
    # sigma 10 (allowed by the spec) has a kernel radius of 30 > a 28-pixel (MedMNIST) side
    x = torch.rand(1, 28, 28, generator=gen(0))
    y = parse_degradation("blur:sigma=10")(x, gen())
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert y.std() < x.std()
    # and after down-sampling to 7x7 as well
    y = parse_degradation("downsample:factor=4+blur:sigma=3")(x, gen())
    assert y.shape == (1, 7, 7)


def test_blur_is_per_channel():
    x = torch.zeros(3, 21, 21)
    x[1, 10, 10] = 1.0
    y = Blur(1.0)(x, gen())
    assert y[0].abs().max() == 0 and y[2].abs().max() == 0
    assert y[1].sum().item() == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------- Downsample
@pytest.mark.parametrize("factor", [2, 4])
def test_downsample_divides_shape_and_preserves_mean(factor):
    x = torch.rand(3, 32, 48, generator=gen(5))
    y = Downsample(factor)(x, gen())
    assert y.shape == (3, 32 // factor, 48 // factor)
    assert y.mean().item() == pytest.approx(x.mean().item(), abs=1e-6)
    assert Downsample(factor).scale == factor


def test_downsample_is_an_exact_area_average():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0],
                       [5.0, 6.0, 7.0, 8.0],
                       [9.0, 10.0, 11.0, 12.0],
                       [13.0, 14.0, 15.0, 16.0]]])
    y = Downsample(2)(x, gen())
    assert torch.equal(y, torch.tensor([[[3.5, 5.5], [11.5, 13.5]]]))
    assert torch.equal(Downsample(4)(x, gen()), torch.tensor([[[8.5]]]))


def test_downsample_rejects_indivisible_side():
    with pytest.raises(ValueError, match="divisible by 4"):
        Downsample(4)(torch.zeros(1, 30, 30), gen())


# ---------------------------------------------------------------- composition
def test_composition_has_scale_and_order():
    spec = "blur:sigma=1+downsample:factor=2+gaussian:sigma=0.05"
    d = parse_degradation(spec)
    assert [type(s) for s in d.steps] == [Blur, Downsample, Gaussian]
    assert d.steps[0].sigma == 1.0 and d.steps[1].factor == 2 and d.steps[2].sigma == 0.05
    assert d.scale == 2
    assert str(d) == spec

    x = torch.rand(1, 64, 64, generator=gen(9))
    y = d(x, gen(11))
    # the same steps applied by hand, in order, with the same generator state
    g = gen(11)
    expected = Gaussian(0.05)(Downsample(2)(Blur(1.0)(x, g), g), g)
    assert y.shape == (1, 32, 32)
    assert torch.equal(y, expected)
    # noise is added after down-sampling (full sigma), not averaged away by it (sigma / 2)
    clean = Downsample(2)(Blur(1.0)(x, gen()), gen())
    assert (y - clean).double().std().item() == pytest.approx(0.05, rel=0.05)


def test_scale_multiplies_over_steps():
    assert parse_degradation("sr2+sr2").scale == 4
    assert parse_degradation("downsample:factor=2+downsample:factor=4").scale == 8
    assert parse_degradation("gaussian+blur").scale == 1


def test_spaces_around_steps_are_allowed():
    d = parse_degradation(" blur:sigma=1 + gaussian:sigma=0.05 ")
    assert [type(s) for s in d.steps] == [Blur, Gaussian]


# ---------------------------------------------------------------- seeding
@pytest.mark.parametrize("spec", ["gaussian", "lowdose", "blur+sr2+gaussian:sigma=0.02"])
def test_same_seed_same_output_different_seed_different(spec):
    d = parse_degradation(spec)
    x = torch.rand(1, 32, 32, generator=gen(0))
    a, b, c = d(x, gen(42)), d(x, gen(42)), d(x, gen(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_degradation_does_not_modify_its_input():
    x = torch.rand(1, 32, 32, generator=gen(0))
    before = x.clone()
    parse_degradation("blur+gaussian")(x, gen(1))
    assert torch.equal(x, before)


# ---------------------------------------------------------------- shorthands
@pytest.mark.parametrize("spec,types,scale", [
    ("gaussian", [Gaussian], 1),
    ("lowdose", [Poisson], 1),
    ("sr2", [Downsample], 2),
    ("sr4", [Downsample], 4),
    ("none", [], 1),
    ("", [], 1),
    ("blur", [Blur], 1),
    ("blur+sr2+gaussian", [Blur, Downsample, Gaussian], 2),
])
def test_shorthands_parse(spec, types, scale):
    d = parse_degradation(spec)
    assert isinstance(d, Degradation)
    assert [type(s) for s in d.steps] == types
    assert d.scale == scale


def test_shorthand_values():
    assert parse_degradation("gaussian").steps[0].sigma == 0.1
    assert parse_degradation("blur").steps[0].sigma == 1.0
    assert set(SHORTHANDS) == {"gaussian", "lowdose", "blur", "sr2", "sr4", "none"}
    assert str(parse_degradation("none")) == "none"


def test_none_is_identity():
    x = torch.rand(1, 16, 16, generator=gen(0))
    assert torch.equal(parse_degradation("none")(x, gen()), x)


def test_numeric_values_parse_types():
    assert parse_degradation("downsample:factor=4.0").steps[0].factor == 4
    assert isinstance(parse_degradation("downsample:factor=2").steps[0].factor, int)
    assert parse_degradation("poisson:dose=1e3").steps[0].dose == 1000.0
    assert parse_degradation("gaussian:sigma=0").steps[0].sigma == 0.0


# ---------------------------------------------------------------- bad specs
@pytest.mark.parametrize("spec,needle", [
    ("salt:amount=0.1", "unknown step 'salt'"),
    ("gaussian+jpeg", "unknown step 'jpeg'"),
    ("Gaussian", "unknown step 'Gaussian'"),
    ("gaussian:dose=3", "found 'dose=3'"),
    ("gaussian:dose=3", "takes sigma=<value>"),
    ("blur:radius=2", "found 'radius=2'"),
    ("downsample:sigma=1", "takes factor=<value>"),
    ("gaussian:sigma", "found 'sigma'"),
    ("gaussian:sigma=abc", "gaussian:sigma must be a float, found 'abc'"),
    ("poisson:dose=lots", "poisson:dose must be a float"),
    ("downsample:factor=two", "downsample:factor must be a int"),
    ("downsample:factor=2.5", "downsample:factor must be a int"),
    ("downsample:factor=3", "downsample:factor must be 2 or 4, found 3"),
    ("downsample:factor=8", "must be 2 or 4"),
    ("gaussian:sigma=-0.1", "gaussian:sigma must be in [0.0, 10.0], found -0.1"),
    ("blur:sigma=-1", "blur:sigma must be in"),
    ("blur:sigma=11", "blur:sigma must be in"),
    ("gaussian:sigma=nan", "gaussian:sigma must be in"),
    ("poisson:dose=0", "poisson:dose must be in (0.0"),
    ("poisson:dose=-5", "poisson:dose must be in"),
    ("blur:sigma=1+downsample:factor=3", "downsample:factor must be 2 or 4"),
])
def test_bad_specs_raise_config_error_naming_the_part(spec, needle):
    with pytest.raises(ConfigError) as info:
        parse_degradation(spec)
    msg = str(info.value)
    assert needle in msg
    assert "data.degradation" in msg
    assert repr(spec) in msg  # the whole spec is quoted for context


def test_unknown_step_lists_the_choices():
    with pytest.raises(ConfigError) as info:
        parse_degradation("sharpen")
    msg = str(info.value)
    for name in ("gaussian", "poisson", "blur", "downsample", "sr2", "lowdose"):
        assert name in msg

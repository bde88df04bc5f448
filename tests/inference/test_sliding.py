"""Sliding-window inference: an image that fits the training window gives exactly the whole-image output;
larger images are tiled (never resized), super-resolution comes back upscaled, bad images are refused."""

from __future__ import annotations

import numpy as np
import pytest

from gradprom.inference.pipeline import image_enhancer
from gradprom.platform.errors import ConfigError, DataError

from ._helpers import network


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("size", [(32, 32), (20, 28)])
def test_fitting_image_equals_whole_image_output(plain_run, size, blend):
    x = np.random.default_rng(0).random((1, *size), dtype=np.float32)
    got = image_enhancer(plain_run, overlap=0.5, blend=blend)(x)
    np.testing.assert_allclose(got, network(plain_run, x), atol=1e-6, rtol=0)


def test_super_resolution_fitting_image_equals_whole_image_output(sr_run):
    assert sr_run.scale == 2 and sr_run.train_size == (16, 16)
    x = np.random.default_rng(1).random((1, 16, 12), dtype=np.float32)
    got = image_enhancer(sr_run)(x)
    assert got.shape == (1, 32, 24)
    np.testing.assert_allclose(got, network(sr_run, x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("run_name, size", [("plain_run", (70, 45)), ("sr_run", (40, 24))])
def test_larger_images_are_tiled_at_their_own_size(request, run_name, size):
    run = request.getfixturevalue(run_name)
    x = np.random.default_rng(2).random((1, *size), dtype=np.float32)
    got = image_enhancer(run, overlap=0.25)(x)
    s = run.scale
    assert got.shape == (1, size[0] * s, size[1] * s)
    assert np.isfinite(got).all() and got.min() >= 0 and got.max() <= 1
    # tiles stitch into one image: close to the whole-image output away from the tile borders' context effects
    assert np.abs(got - network(run, x)).mean() < 0.05


@pytest.mark.parametrize("image, words", [
    (np.zeros((3, 32, 32), np.float32), r"3 channel\(s\)"),
    (np.full((1, 32, 32), np.nan, np.float32), "NaN"),
    (np.zeros((1, 6, 32), np.float32), "too small"),
])
def test_bad_images_are_refused_naming_the_input(plain_run, image, words):
    with pytest.raises(DataError, match=words) as e:
        image_enhancer(plain_run)(image, "scan-7.png")
    assert "scan-7.png" in str(e.value)


def test_bad_options_are_config_errors(plain_run):
    with pytest.raises(ConfigError, match="--overlap"):
        image_enhancer(plain_run, overlap=1.0)
    with pytest.raises(ConfigError, match="--blend"):
        image_enhancer(plain_run, blend="median")

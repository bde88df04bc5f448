"""Models: shapes for any input size, super-resolution, RGB; the enhancer starts near the identity."""

from __future__ import annotations

import pytest
import torch

from gradprom.platform.models import build_enhancer, build_recognizer


@pytest.mark.parametrize("name", ["unet", "basicunet"])
@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 30), (1, 64)])
def test_enhancer_shapes(name, scale, channels, size):
    E = build_enhancer(name, channels, scale, [4, 8, 16])
    x = torch.rand(2, channels, size, size)
    assert E(x).shape == (2, channels, size * scale, size * scale)


def test_enhancer_starts_close_to_identity():
    torch.manual_seed(0)
    E = build_enhancer("unet", 1, 1, [8, 16])
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        r = (E(x) - x).abs().mean()
    assert float(r) < 0.05


@pytest.mark.parametrize("name", ["resnet", "densenet"])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_classifiers(name, norm):
    R = build_recognizer(name, "classification", 3, 5, [4, 8], norm=norm)
    assert R(torch.rand(2, 3, 28, 28)).shape == (2, 5)


def test_segmenter_any_size():
    R = build_recognizer("unet", "segmentation", 1, 3, [4, 8, 16])
    assert R(torch.rand(2, 1, 30, 30)).shape == (2, 3, 30, 30)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown enhancer"):
        build_enhancer("vit", 1)
    with pytest.raises(ValueError, match="cannot segment"):
        build_recognizer("resnet", "segmentation", 1, 3)

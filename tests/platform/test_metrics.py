"""Metrics against numpy references and known values (MONAI's testing habits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradprom.platform.metrics import EvalAccumulator, auc, dice, psnr, ssim


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (3, 3, 20, 24)])
def test_psnr_matches_numpy(shape):
    g = torch.Generator().manual_seed(0)
    t = torch.rand(shape, generator=g)
    p = (t + 0.05 * torch.randn(shape, generator=g)).clamp(0, 1)
    mse = ((p.numpy() - t.numpy()) ** 2).reshape(shape[0], -1).mean(1)
    np.testing.assert_allclose(psnr(p, t).numpy(), 10 * np.log10(1.0 / mse), rtol=1e-5)


def test_psnr_identical_images_is_capped_not_inf():
    t = torch.rand(2, 1, 8, 8)
    assert torch.all(psnr(t, t) == 100.0)


def test_ssim_known_values():
    t = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ssim(t, t), torch.ones(2))
    noisy = (t + 0.2 * torch.randn(t.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    assert torch.all(ssim(noisy, t) < 0.9)
    assert ssim(noisy, t).shape == (2,)


def test_dice_known_values():
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, :2, :2] = 1  # 4 pixels of class 1; class 2 absent
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 1, :2, :] = 5  # predict 8 pixels of class 1
    logits[0, 0, 2:, :] = 5
    # dice(class 1) = 2*4 / (8 + 4) = 2/3; class 2 absent in the reference -> ignored
    assert float(dice(logits, mask, 3)) == pytest.approx(2 / 3)


def test_auc_and_accumulator():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1, 1])
    assert auc(probs, labels) == pytest.approx(1.0)  # every positive scores above the negative
    assert math.isnan(auc(probs, torch.ones(4, dtype=torch.long)))
    acc = EvalAccumulator("classification", 2)
    x = torch.rand(4, 1, 16, 16)
    acc(x, x, x, torch.log(probs), labels)
    m = acc.aggregate()
    assert m["accuracy"] == pytest.approx(0.75) and m["auc"] == pytest.approx(1.0)
    acc.reset()
    with pytest.raises(ValueError):
        acc.aggregate()

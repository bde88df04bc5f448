"""Loss functions: L1 (+ optional 1 - SSIM) for enhancement; CE or Dice + CE for recognition (MONAI)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from monai.losses.dice import DiceCELoss
from monai.losses.ssim_loss import SSIMLoss
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


def enhancement_loss(name: str) -> LossFn:
    """"l1" or "l1_ssim" (L1 + (1 - SSIM), data range 1)."""
    if name == "l1":
        return F.l1_loss
    if name == "l1_ssim":
        ssim = SSIMLoss(spatial_dims=2, data_range=1.0)

        def l1_ssim(pred: Tensor, target: Tensor) -> Tensor:
            return F.l1_loss(pred, target) + ssim(pred, target)

        return l1_ssim
    raise ValueError(f"unknown enhancement loss {name!r}; use 'l1' or 'l1_ssim'")


def recognition_loss(task: str) -> LossFn:
    """Cross-entropy for classification (labels (B,)); Dice + CE for segmentation (masks (B, H, W))."""
    if task == "classification":
        return F.cross_entropy
    if task == "segmentation":
        dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)

        def seg_loss(logits: Tensor, mask: Tensor) -> Tensor:
            return dice_ce(logits, mask.unsqueeze(1))

        return seg_loss
    raise ValueError(f"unknown task {task!r}; use 'classification' or 'segmentation'")

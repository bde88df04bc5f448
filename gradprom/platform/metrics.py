"""Image-quality and task metrics, in MONAI's cumulative pattern: call per batch, `aggregate()`, `reset()`.

PSNR and SSIM (torchmetrics) use data range 1 on images clamped to [0, 1] (the range of the clean images),
averaged per image. Classification: accuracy and AUC (macro one-vs-rest; binary AUC for two classes).
Segmentation: Dice (MONAI), mean over foreground classes present in the reference, per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.metrics.meandice import compute_dice
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """(B,) PSNR in dB of each image, data range 1 (pred clamped to [0, 1]; capped at 100 dB, not inf)."""
    v = peak_signal_noise_ratio(pred.clamp(0, 1), target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return v.clamp_max(100.0)


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """(B,) SSIM of each image, data range 1 (pred clamped to [0, 1])."""
    return structural_similarity_index_measure(pred.clamp(0, 1), target, data_range=1.0, reduction="none")


def dice(logits: Tensor, mask: Tensor, num_classes: int) -> Tensor:
    """(B,) mean Dice over foreground classes that occur in the reference mask (MONAI compute_dice)."""
    pred = F.one_hot(logits.argmax(1), num_classes).permute(0, 3, 1, 2).float()
    ref = F.one_hot(mask, num_classes).permute(0, 3, 1, 2).float()
    d = compute_dice(pred, ref, include_background=False, ignore_empty=True)  # (B, K-1), NaN where absent
    return torch.nanmean(d, dim=1)


def auc(probs: Tensor, labels: Tensor) -> float:
    """Macro one-vs-rest AUC (binary AUC for two classes); NaN when a split holds a single class."""
    k = probs.shape[1]
    if labels.unique().numel() < 2:
        return float("nan")
    if k == 2:
        return float(binary_auroc(probs[:, 1], labels))
    return float(multiclass_auroc(probs, labels, num_classes=k, average="macro"))


class EvalAccumulator:
    """Collect per-image quality and task results over batches, then aggregate to one metrics dict."""

    def __init__(self, task: str, num_outputs: int):
        self.task, self.k = task, num_outputs
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._psnr, self._ssim, self._psnr_in, self._ssim_in = [], [], [], []
        self._probs, self._labels, self._dice = [], [], []
        self._loss_e, self._loss_r, self._n = 0.0, 0.0, 0

    def __call__(self, x_hat: Tensor, x_hq: Tensor, x_in: Tensor, out: Tensor, y: Tensor,
                 loss_e: float = 0.0, loss_r: float = 0.0) -> None:
        """Add one batch: enhanced, clean and (upsampled) input images, recognizer output and targets."""
        x_hat, x_hq, x_in, out = x_hat.float().cpu(), x_hq.float().cpu(), x_in.float().cpu(), out.float().cpu()
        y = y.cpu()
        self._psnr.append(psnr(x_hat, x_hq))
        self._ssim.append(ssim(x_hat, x_hq))
        self._psnr_in.append(psnr(x_in, x_hq))
        self._ssim_in.append(ssim(x_in, x_hq))
        if self.task == "classification":
            self._probs.append(out.softmax(1))
            self._labels.append(y)
        else:
            self._dice.append(dice(out, y, self.k))
        b = x_hat.shape[0]
        self._loss_e += loss_e * b
        self._loss_r += loss_r * b
        self._n += b

    def aggregate(self) -> dict[str, float]:
        """Means over all images seen: psnr, ssim, psnr_input, ssim_input, losses and the task metrics."""
        if self._n == 0:
            raise ValueError("EvalAccumulator.aggregate() called before any batch was added")
        m = {"psnr": _mean(self._psnr), "ssim": _mean(self._ssim), "psnr_input": _mean(self._psnr_in),
             "ssim_input": _mean(self._ssim_in), "loss_e": self._loss_e / self._n, "loss_r": self._loss_r / self._n}
        if self.task == "classification":
            probs, labels = torch.cat(self._probs), torch.cat(self._labels)
            m["accuracy"] = float((probs.argmax(1) == labels).float().mean())
            m["auc"] = auc(probs, labels)
        else:
            m["dice"] = _mean(self._dice)
        return m


def _mean(parts: list[Tensor]) -> float:
    t = torch.cat(parts).double()
    t = t[torch.isfinite(t)]  # images without any foreground class give NaN Dice
    return float(t.mean()) if t.numel() else math.nan


def task_metric_name(task: str) -> str:
    """The headline task metric: accuracy for classification, dice for segmentation."""
    return "accuracy" if task == "classification" else "dice"

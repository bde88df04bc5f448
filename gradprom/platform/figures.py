"""PNG figures of a run: sample images (degraded / enhanced / clean) and curves over epochs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gradprom.platform.atomic import atomic_path  # noqa: E402


def _show(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> something imshow takes, clipped to [0, 1]."""
    img = np.clip(img, 0, 1)
    return img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)


def save_samples(path: Path, degraded: np.ndarray, enhanced: np.ndarray, clean: np.ndarray,
                 titles: list[str] | None = None) -> None:
    """A grid: one column per sample, rows degraded / enhanced / clean (degraded upsampled if smaller)."""
    n = len(clean)
    fig, axes = plt.subplots(3, n, figsize=(1.8 * n, 5.6), squeeze=False)
    for j in range(n):
        for i, (name, imgs) in enumerate((("degraded", degraded), ("enhanced", enhanced), ("clean", clean))):
            ax = axes[i, j]
            ax.imshow(_show(imgs[j]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name)
            if i == 0 and titles:
                ax.set_title(titles[j], fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_curves(path: Path, epoch_rows: list[dict[str, Any]], task_metric: str) -> None:
    """Validation PSNR, task metric and training gate-open rate against epoch."""
    val = [r for r in epoch_rows if r.get("split") == "val"]
    if not val:
        return
    ep = [r["epoch"] for r in val]
    panels = [("PSNR (dB)", "psnr"), (task_metric, task_metric), ("gate-open rate", "gate_open_rate"),
              ("mean cos(g_e, g_r)", "mean_cos")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 2.8))
    for ax, (label, key) in zip(axes, panels):
        ys = [r.get(key, math.nan) for r in val]
        ax.plot(ep, [math.nan if y is None else y for y in ys], marker="o")
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG, atomically, and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)

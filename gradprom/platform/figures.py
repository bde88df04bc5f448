"""PNG figures of a run: sample images and curves over epochs.

samples.png  one column per image; rows degraded / enhanced / clean / |x̂ - x_hq| / a zoomed crop (enhanced
             left, clean right) on the lesion (segmentation: its mask; classification: the centre), plus for
             segmentation the ground-truth and predicted masks overlaid; titles carry the per-image PSNR/SSIM,
             the label and the prediction
curves.png   val PSNR (with the degraded input's PSNR and the test marker), the task metric (with the test
             marker), loss_e and loss_r (train and val), gate-open rate and mean cos, against 1-based epochs
"""

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


LESION = 2  # the phantoms' lesion class in a segmentation mask


def _crop_box(mask: np.ndarray | None, h: int, w: int) -> tuple[slice, slice]:
    """A square crop of about a third of the image around the lesion (else the centre)."""
    side = max(8, min(h, w) // 3)
    cy, cx = h // 2, w // 2
    if mask is not None and (mask == LESION).any():
        ys, xs = np.nonzero(mask == LESION)
        cy, cx = int(ys.mean()), int(xs.mean())
    y0, x0 = min(max(cy - side // 2, 0), h - side), min(max(cx - side // 2, 0), w - side)
    return slice(y0, y0 + side), slice(x0, x0 + side)


def sample_figure(samples: dict[str, np.ndarray], task: str, class_names: list[str] | None = None):
    """The samples figure (see the module docstring); `samples` as `evaluate_split(..., sample_count=k)` gives."""
    deg, enh, clean = samples["degraded"], samples["enhanced"], samples["clean"]
    y, pred = samples.get("y"), samples.get("pred")
    seg = task == "segmentation" and y is not None and np.ndim(y) == 3
    n = len(clean)
    rows = ["degraded", "enhanced", "clean", "|x̂ − x_hq|", "zoom: enhanced | clean"] + (
        ["pred (fill), truth (lines)"] if seg else [])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.9 * n, 2.0 * len(rows)), squeeze=False)
    err_max = float(np.abs(np.clip(enh, 0, 1) - clean).max()) or 1.0
    name = (lambda c: class_names[int(c)] if class_names and int(c) < len(class_names) else str(int(c)))
    for j in range(n):
        h, w = clean[j].shape[-2:]
        box = _crop_box(y[j] if seg else None, h, w)
        x_e, x_c = _show(enh[j]), _show(clean[j])
        crop = np.concatenate([x_e[box], np.ones_like(x_e[box][:, :1]), x_c[box]], axis=1)
        err = np.abs(np.clip(enh[j], 0, 1) - clean[j]).max(axis=0)
        images = [(_show(deg[j]), "gray", 1.0), (x_e, "gray", 1.0), (x_c, "gray", 1.0), (err, "magma", err_max),
                  (crop, "gray", 1.0)]
        if seg:
            images.append((x_c, "gray", 1.0))
        for i, (img, cmap, vmax) in enumerate(images):
            ax = axes[i, j]
            ax.imshow(img, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 4:  # where the crop sits in the enhanced image
                axes[1, j].add_patch(plt.Rectangle((box[1].start - 0.5, box[0].start - 0.5), box[1].stop - box[1].start,
                                                   box[0].stop - box[0].start, fill=False, edgecolor="yellow", lw=0.8))
            if j == 0:
                ax.set_ylabel(rows[i], fontsize=8)
        if seg:  # the prediction filled (organ blue, lesion red), the ground truth as lines
            ax = axes[5, j]
            fill = np.zeros((h, w, 4))
            fill[pred[j] == 1] = (0.2, 0.5, 1.0, 0.35)
            fill[pred[j] == LESION] = (1.0, 0.15, 0.1, 0.55)
            ax.imshow(fill, interpolation="nearest")
            for cls, colour in ((1, "cyan"), (LESION, "yellow")):
                if (y[j] == cls).any():
                    ax.contour(y[j] == cls, levels=[0.5], colors=colour, linewidths=0.8)
        if "psnr_in" in samples:
            axes[0, j].set_title(f"input {samples['psnr_in'][j]:.1f} dB", fontsize=8)
        if "psnr" in samples:
            axes[1, j].set_title(f"{samples['psnr'][j]:.1f} dB · SSIM {samples['ssim'][j]:.2f}", fontsize=8)
        if y is not None and not seg:
            ok = pred is not None and int(pred[j]) == int(y[j])
            axes[2, j].set_title(f"label {name(y[j])}" + (f"\npred {name(pred[j])}" if pred is not None else ""),
                                 fontsize=8, color="black" if ok else "crimson")
    fig.tight_layout()
    return fig


def save_sample_figure(path: Path, samples: dict[str, np.ndarray], task: str,
                       class_names: list[str] | None = None) -> None:
    """Write `sample_figure` as PNG."""
    save_figure(sample_figure(samples, task, class_names), path)


def curves_figure(epoch_rows: list[dict[str, Any]], task_metric: str):
    """The curves figure (see the module docstring); None without a val row."""
    val = [r for r in epoch_rows if r.get("split") == "val"]
    if not val:
        return None
    train = [r for r in epoch_rows if r.get("split") == "train"]
    test = next((r for r in epoch_rows if r.get("split") == "test"), None)

    def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
        pts = [(r["epoch"] + 1, r.get(key)) for r in rows]  # 1-based, as the log says "epoch 1/N"
        return [e for e, _ in pts], [math.nan if v is None else float(v) for _, v in pts]

    panels = [("PSNR (dB)", "psnr"), (task_metric, task_metric), ("loss_e", "loss_e"), ("loss_r", "loss_r"),
              ("gate-open rate", "gate_open_rate"), ("mean cos(g_e, g_r)", "mean_cos")]
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 5.6))
    last = max(r["epoch"] for r in val) + 1
    for ax, (label, key) in zip(axes.flat, panels):
        if key in ("loss_e", "loss_r"):
            ax.plot(*series(train, key), marker="o", label="train")
            ax.plot(*series(val, key), marker="s", label="val")
        else:
            ax.plot(*series(train if key in ("gate_open_rate", "mean_cos") else val, key), marker="o",
                    label="train" if key in ("gate_open_rate", "mean_cos") else "val")
        if key == "psnr":
            ax.plot(*series(val, "psnr_input"), ls="--", color="gray", label="degraded input")
        if test is not None and key in ("psnr", task_metric) and test.get(key) is not None:
            ax.plot([last], [test[key]], marker="*", ms=11, ls="none", color="crimson", label="test")
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        if key in ("psnr", "loss_e"):
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_curves(path: Path, epoch_rows: list[dict[str, Any]], task_metric: str) -> None:
    """Write `curves_figure` as PNG (nothing without a val row)."""
    fig = curves_figure(epoch_rows, task_metric)
    if fig is not None:
        save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG, atomically, and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)

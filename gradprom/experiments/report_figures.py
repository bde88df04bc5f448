"""The report's figures: PSNR-vs-task scatter, learning curves, gate behaviour, labelled sample grids.

Every strategy has one fixed colour (STRATEGY_COLOURS) on every axis of every figure, so a legend on one
axis is right for all of them (evidence audit D9).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from gradprom.platform.figures import save_figure  # noqa: E402
from gradprom.platform.rundir import RunDir  # noqa: E402

from .grid import STRATEGIES  # noqa: E402

_PALETTE = [plt.get_cmap("tab10")(i) for i in range(10)] + [plt.get_cmap("Dark2")(i) for i in range(8)]
STRATEGY_COLOURS = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(STRATEGIES)}


def colour(name: str):
    return STRATEGY_COLOURS.get(name.partition("@")[0], "0.3")  # a λ_r sweep arm takes its strategy's colour


def scatter_figure(path: Path, panels: list[dict]) -> Path:
    """One panel per (task, degradation): seed-mean PSNR vs judge score per strategy, seed-SD error bars.

    panels: [{"title", "ylabel", "points": {strategy: (psnr means, score means)}, "refs": {name: score}}]."""
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, p in zip(axes[0], panels):
        for name, (xs, ys) in p["points"].items():
            xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
            if not (np.isfinite(xs).any() and np.isfinite(ys).any()):
                continue
            sx = xs.std(ddof=1) if xs.size > 1 else 0.0
            sy = ys.std(ddof=1) if ys.size > 1 else 0.0
            ax.errorbar(np.nanmean(xs), np.nanmean(ys), xerr=sx, yerr=sy, fmt="o", color=colour(name), label=name,
                        capsize=3, ms=5)
        for name, v in p.get("refs", {}).items():
            if np.isfinite(v):
                ax.axhline(v, color="k", lw=0.7, ls=":" if name == "clean" else "--")
                ax.annotate(f"judge, {name}", (0.01, v), xycoords=("axes fraction", "data"), fontsize=6,
                            va="bottom")
        ax.set_xlabel("PSNR (dB)")
        ax.set_ylabel(p["ylabel"])
        ax.set_title(p["title"], fontsize=9)
        ax.grid(alpha=0.3)
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle("seed means; error bars: seed SD", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def pareto_figure(path: Path, panels: list[dict]) -> Path | None:
    """λ_r sweep: per strategy, its arms' seed-mean (PSNR, task) joined in order of the λ_r factor.

    panels as for scatter_figure; drawn only when some strategy ran at two or more factors."""
    fronts = []
    for p in panels:
        by_base: dict[str, list[tuple[float, float, float]]] = {}
        for name, (xs, ys) in p["points"].items():
            base, _, k = name.partition("@")
            by_base.setdefault(base, []).append((float(k) if k else 1.0, float(np.nanmean(xs)), float(np.nanmean(ys))))
        fronts.append({b: sorted(v) for b, v in by_base.items() if len(v) > 1})
    if not any(fronts):
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, p, front in zip(axes[0], panels, fronts):
        for base, pts in front.items():
            ks, xs, ys = zip(*pts)
            ax.plot(xs, ys, "-o", color=colour(base), label=base, ms=4)
            for k, x, y in pts:
                ax.annotate(f"×{k:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("PSNR (dB)")
        ax.set_ylabel(p["ylabel"])
        ax.set_title(p["title"], fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="best")
    fig.suptitle("λ_r sweep: seed means per multiple of the calibrated λ_r", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _band(ax, x: np.ndarray, curves: list[np.ndarray], name: str) -> None:
    if not curves:
        return
    m = min(len(c) for c in curves)
    a = np.stack([c[:m] for c in curves])
    mean = np.nanmean(a, axis=0)
    ax.plot(x[:m], mean, color=colour(name), lw=1.2, label=name)
    if a.shape[0] > 1:
        ax.fill_between(x[:m], np.nanmin(a, axis=0), np.nanmax(a, axis=0), color=colour(name), alpha=0.15, lw=0)


def _rolling(v: np.ndarray, w: int) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    ok = np.isfinite(v)
    num = np.convolve(np.where(ok, v, 0.0), np.ones(w), mode="valid")
    den = np.convolve(ok.astype(float), np.ones(w), mode="valid")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def gate_figure(path: Path, runs: Path, strategies: list[str], task: str, deg: str, seeds: list[int]) -> Path:
    """Rolling cos(g_e, g_r) and gate-open rate over steps: mean over all seeds, band min..max."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for s in strategies:
        per_col: dict[str, list[np.ndarray]] = {"cos": [], "gate_open": []}
        step = None
        for seed in seeds:
            t = RunDir(runs / f"{task}-{deg}-{s}-s{seed}").read_steps()
            if t is None:
                continue
            step = np.asarray(t["step"].to_pylist())
            for col in per_col:
                v = np.asarray(t[col].to_pylist(), dtype=float)
                if np.isfinite(v).any():
                    w = max(1, min(10, len(v) // 5))
                    per_col[col].append(_rolling(v, w))
        if step is None:
            continue
        for ax, col in zip(axes, ("cos", "gate_open")):
            if per_col[col]:
                w = len(step) - len(per_col[col][0]) + 1
                _band(ax, step[w - 1:], per_col[col], s)
    axes[0].axhline(0.0, color="k", lw=0.6, ls="--")
    axes[0].set_title("cos(g_e, g_r), rolling mean", fontsize=9)
    axes[1].set_title("gate open (1) / closed (0), rolling mean", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"{task} · {deg} · mean of seeds {seeds}, band min..max", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def learning_curves(path: Path, runs: Path, strategies: list[str], task: str, deg: str, seeds: list[int]) -> Path:
    """Validation PSNR and validation loss_e per epoch (epochs.parquet): mean over seeds, band min..max."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for s in strategies:
        curves: dict[str, list[np.ndarray]] = {"psnr": [], "loss_e": []}
        epochs = None
        for seed in seeds:
            rows = [r for r in RunDir(runs / f"{task}-{deg}-{s}-s{seed}").read_epochs() if r.get("split") == "val"]
            if not rows:
                continue
            rows.sort(key=lambda r: r["epoch"])
            epochs = np.asarray([r["epoch"] for r in rows], dtype=float)
            for k in curves:
                curves[k].append(np.asarray([r.get(k, np.nan) for r in rows], dtype=float))
        if epochs is not None:
            for ax, k in zip(axes, curves):
                _band(ax, epochs, curves[k], s)
    axes[0].set_title("validation PSNR (dB)", fontsize=9)
    axes[1].set_title("validation enhancement loss", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=6, loc="best")
    fig.suptitle(f"{task} · {deg} · learning curves, mean of seeds {seeds}, band min..max", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path


@torch.no_grad()
def samples_figure(path: Path, runs: Path, strategies: list[str], task: str, deg: str, seed: int,
                   n: int = 3) -> Path:
    """Rows: degraded, each strategy, clean; per test image an image column (titled with its PSNR) and an
    error-map column |x̂ − x| on a fixed 0..0.2 scale."""
    from gradprom.platform.config import build_config, load_config_file
    from gradprom.platform.data.sources import build_datasets
    from gradprom.platform.evaluate import load_trained_models
    from gradprom.platform.metrics import psnr

    device = torch.device("cpu")
    names = [s for s in strategies if (runs / f"{task}-{deg}-{s}-s{seed}" / "checkpoints" / "latest.pt").is_file()]
    if not names:
        return path
    first = runs / f"{task}-{deg}-{names[0]}-s{seed}"
    cfg = build_config(load_config_file(first / "config.yaml"), source=str(first))
    datasets, info, degradation = build_datasets(cfg)
    batch = next(iter(DataLoader(datasets["test"], batch_size=n, shuffle=False)))
    x_lq, x_hq = batch["x_lq"], batch["x_hq"]
    x_in = x_lq if x_lq.shape == x_hq.shape else torch.nn.functional.interpolate(
        x_lq, size=x_hq.shape[-2:], mode="bilinear", align_corners=False)  # as the evaluation upsamples
    rows = [("degraded", x_in)]
    for s in names:
        d = runs / f"{task}-{deg}-{s}-s{seed}"
        c = build_config(load_config_file(d / "config.yaml"), source=str(d))
        m = load_trained_models(c, info, degradation.scale, RunDir(d).latest_checkpoint(), device)
        rows.append((s, m.enhancer.eval()(x_lq).float()))
    rows.append(("clean", x_hq))
    k = min(n, x_hq.shape[0])
    fig, axes = plt.subplots(len(rows), 2 * k, figsize=(1.5 * 2 * k, 1.6 * len(rows)), squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        p = psnr(imgs, x_hq).tolist()
        for j in range(k):
            img = imgs[j].clamp(0, 1).numpy()
            err = np.abs(img - x_hq[j].numpy()).mean(0)
            a, b = axes[i, 2 * j], axes[i, 2 * j + 1]
            a.imshow(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1), cmap="gray", vmin=0, vmax=1,
                     interpolation="nearest")
            b.imshow(err, cmap="magma", vmin=0, vmax=0.2, interpolation="nearest")
            if label != "clean":
                a.set_title(f"{p[j]:.1f} dB", fontsize=6)
            b.set_title("|error|", fontsize=6)
            for ax in (a, b):
                ax.set_xticks([]), ax.set_yticks([])
        axes[i, 0].set_ylabel(label, fontsize=6)
    fig.suptitle(f"{task} · {deg} · seed {seed} · error maps on 0..0.2", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return path

"""The run figures: panel counts, per-image titles, 1-based epochs, the input-PSNR line and the test marker."""

from __future__ import annotations

import numpy as np
import pytest

from gradprom.platform.data.phantoms import make_phantoms
from gradprom.platform.figures import curves_figure, sample_figure, save_sample_figure


def _samples(task: str, n: int = 4) -> dict[str, np.ndarray]:
    ph = make_phantoms(n, seed=0, size=32)
    rng = np.random.default_rng(0)
    clean = ph.images
    deg = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1).astype(np.float32)
    enh = np.clip(clean + rng.normal(0, 0.03, clean.shape), 0, 1).astype(np.float32)
    y = ph.labels if task == "classification" else ph.masks
    pred = y[::-1].copy()
    return {"degraded": deg, "enhanced": enh, "clean": clean, "y": y, "pred": pred,
            "psnr": np.full(n, 30.25), "ssim": np.full(n, 0.875), "psnr_in": np.full(n, 20.5)}


@pytest.mark.parametrize("task, rows", [("classification", 5), ("segmentation", 6)])
def test_samples_figure_has_a_row_per_view_and_titles(task, rows, tmp_path):
    s = _samples(task)
    fig = sample_figure(s, task, ["homogeneous", "stripes", "checkerboard"])
    assert len(fig.axes) == rows * 4
    titles = [ax.get_title() for ax in fig.axes]
    assert titles.count("30.2 dB · SSIM 0.88") == 4 and titles.count("input 20.5 dB") == 4
    ylabels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert ylabels[3] == "|x̂ − x_hq|" and ylabels[4].startswith("zoom")
    if task == "classification":
        assert any(t.startswith("label ") and "pred " in t for t in titles)
    else:
        assert ylabels[5].startswith("pred")
        assert fig.axes[5 * 4].collections, "the ground-truth contours are drawn"
    save_sample_figure(tmp_path / "s.png", s, task)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_curves_use_one_based_epochs_with_input_line_and_test_marker():
    rows = []
    for e in range(2):
        rows.append({"epoch": e, "split": "train", "step": 2 * (e + 1), "loss_e": 0.1, "loss_r": 0.2,
                     "gate_open_rate": 0.5, "mean_cos": 0.1})
        rows.append({"epoch": e, "split": "val", "step": 2 * (e + 1), "psnr": 25.0 + e, "psnr_input": 20.0,
                     "accuracy": 0.5, "loss_e": 0.1, "loss_r": 0.2})
    rows.append({"epoch": 1, "split": "test", "step": 4, "psnr": 26.5, "accuracy": 0.6})
    fig = curves_figure(rows, "accuracy")
    assert [ax.get_title() for ax in fig.axes] == ["PSNR (dB)", "accuracy", "loss_e", "loss_r", "gate-open rate",
                                                   "mean cos(g_e, g_r)"]
    psnr = fig.axes[0]
    by_label = {ln.get_label(): ln for ln in psnr.get_lines()}
    assert list(by_label["val"].get_xdata()) == [1, 2]
    assert list(by_label["degraded input"].get_ydata()) == [20.0, 20.0]
    assert list(by_label["test"].get_xdata()) == [2] and list(by_label["test"].get_ydata()) == [26.5]
    assert {ln.get_label() for ln in fig.axes[2].get_lines()} == {"train", "val"}
    assert curves_figure([r for r in rows if r["split"] == "train"], "accuracy") is None

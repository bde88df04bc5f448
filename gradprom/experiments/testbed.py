"""Does a phantom setting carry class evidence a clean-trained recognizer can read, and that degradation hides?

Calibration uses only the training and validation splits (never test): a recognizer is trained on clean
training images, then scored on the clean and on the degraded validation images. The stated rule
(CALIBRATION_RULE) picks the texture contrast; `python -m gradprom.experiments.testbed` prints the table.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gradprom.platform.config import build_config

from .frozen import train_recognizer

CALIBRATION_RULE = ("the smallest texture contrast of the candidates at which (a) a clean-trained recognizer "
                    "scores >= 0.9 on the clean validation images and at least 0.2 less on the degraded ones "
                    "(headroom), and (b) a recognizer trained on degraded training images scores at least 0.2 "
                    "above the majority-class rate on the degraded validation images (the class evidence lies "
                    "above the noise floor, so an enhancer has something to keep)")
CANDIDATES = (0.08, 0.10, 0.12, 0.14, 0.16)


@torch.no_grad()
def _accuracy(R: torch.nn.Module, loader: DataLoader, which: str) -> float:
    hits, n = 0, 0
    for batch in loader:
        x, y = batch[which], batch["y"]
        if x.shape[-1] != batch["x_hq"].shape[-1]:
            x = F.interpolate(x, size=batch["x_hq"].shape[-2:], mode="bilinear", align_corners=False)
        hits += int((R(x).argmax(1) == y).sum())
        n += y.numel()
    return hits / max(n, 1)


def clean_and_degraded_accuracy(raw_cfg: dict, epochs: int, device: torch.device | None = None,
                                seed: int = 0, noisy_trained: bool = False) -> dict[str, Any]:
    """Train a classifier on clean training images; its accuracy on clean and degraded validation images
    (and, with noisy_trained, that of one trained on the degraded training images, on degraded ones)."""
    device = device or torch.device("cpu")
    cfg = build_config({**raw_cfg, "task": "classification"}, source="testbed calibration")
    clean_cfg = build_config({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "degradation": "none"}},
                             source="testbed calibration (clean)")
    R = train_recognizer(clean_cfg, epochs, device, seed)
    from gradprom.platform.data.sources import build_datasets

    datasets, _, _ = build_datasets(cfg)
    loader = DataLoader(datasets["val"], batch_size=64, shuffle=False)
    labels = np.concatenate([b["y"].numpy() for b in loader])
    out = {"clean": _accuracy(R, loader, "x_hq"), "degraded": _accuracy(R, loader, "x_lq"),
           "chance": float(np.bincount(labels).max() / labels.size)}
    if noisy_trained:
        out["noisy_trained"] = _accuracy(train_recognizer(cfg, epochs, device, seed, inputs="x_lq"), loader, "x_lq")
    return out


def calibrate(base: dict, epochs: int, candidates: tuple[float, ...] = CANDIDATES) -> tuple[float | None, list]:
    """Apply CALIBRATION_RULE over `candidates`; returns (chosen contrast or None, table rows)."""
    table = []
    for c in candidates:
        raw = {**base, "data": {**base["data"], "texture_contrast": c}}
        r = clean_and_degraded_accuracy(raw, epochs, noisy_trained=True)
        table.append({"texture_contrast": c, **r})
        if r["clean"] >= 0.9 and r["degraded"] <= r["clean"] - 0.2 and r["noisy_trained"] >= r["chance"] + 0.2:
            return c, table
    return None, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="calibrate the phantom texture contrast on train/val by a stated rule")
    p.add_argument("--version", type=int, default=2)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--num-train", type=int, default=640)
    p.add_argument("--num-val", type=int, default=128)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--degradation", default="gaussian:sigma=0.1")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    base = {"task": "classification", "data": {"source": "phantoms", "image_size": a.size, "num_train": a.num_train,
                                               "num_val": a.num_val, "num_test": 1, "phantom_version": a.version,
                                               "degradation": a.degradation, "batch_size": 32},
            "model": {"recognizer_channels": [8, 16, 32], "recognizer_norm": "instance"}}
    chosen, table = calibrate(base, a.epochs)
    print(f"rule: {CALIBRATION_RULE}")
    for r in table:
        print(f"contrast {r['texture_contrast']:.2f}: clean {r['clean']:.3f}  degraded {r['degraded']:.3f}  "
              f"(majority class {r['chance']:.3f}); trained on degraded: {r['noisy_trained']:.3f}")
    print(f"chosen: {chosen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the enhancer itself gives for an image, to compare the written outputs with."""

from __future__ import annotations

import numpy as np
import torch

from gradprom.inference.runs import TrainedRun


@torch.no_grad()
def network(run: TrainedRun, unit: np.ndarray) -> np.ndarray:
    """E(x) clipped to [0, 1] on the whole image at once, (C, H, W) -> (C, sH, sW)."""
    return run.enhancer(torch.from_numpy(np.ascontiguousarray(unit, np.float32))[None])[0].clamp(0, 1).numpy()


def quantize(y: np.ndarray, levels: int) -> np.ndarray:
    """Unit-range pixels -> the nearest integer level, as the writers do."""
    return np.rint(np.clip(y, 0, 1) * levels)

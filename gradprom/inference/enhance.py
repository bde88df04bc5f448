"""Run the enhancer on one image of any size by MONAI sliding windows of the training size; never resizes.

Windows are the training input size (a smaller side runs whole), so an image that fits runs in one window and
gives exactly the whole-image output. Super-resolution windows come back `scale` times larger (MONAI infers the
zoom from the predictor's output), so the output is the upscaled size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from gradprom.platform.errors import DataError

MIN_SIDE = 8  # the smallest image the readers accept for training


@dataclass
class ImageEnhancer:
    """enhance(image (C, H, W) float32 in [0, 1]) -> (C, H*scale, W*scale) float32 clipped to [0, 1]."""

    model: nn.Module
    channels: int
    scale: int
    window: tuple[int, int]
    overlap: float = 0.25
    blend: str = "gaussian"
    device: torch.device = torch.device("cpu")

    def check(self, image: np.ndarray, where: str) -> None:
        """A DataError naming `where` if the image cannot be enhanced by this model."""
        if image.ndim != 3:
            raise DataError(f"{where}: image of shape {image.shape}; expected (C, H, W).")
        if image.shape[0] != self.channels:
            raise DataError(f"{where}: {image.shape[0]} channel(s), but the enhancer was trained on {self.channels} "
                            f"({'grayscale' if self.channels == 1 else 'RGB'}); convert the image first.")
        if min(image.shape[1:]) < MIN_SIDE:
            raise DataError(f"{where}: image of {image.shape[1]}x{image.shape[2]} pixels is too small; expected at "
                            f"least {MIN_SIDE}x{MIN_SIDE}.")
        if not np.isfinite(image).all():
            raise DataError(f"{where}: image holds NaN/Inf pixels; expected finite values.")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{where}: float pixels in [{lo:.4g}, {hi:.4g}]; expected [0, 1] as in training "
                            f"(or uint8/uint16 pixels).")

    @torch.no_grad()
    def __call__(self, image: np.ndarray, where: str = "image") -> np.ndarray:
        """The enhanced image (checked first; see `check`)."""
        self.check(image, where)
        x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None].to(self.device)
        roi = (min(self.window[0], x.shape[-2]), min(self.window[1], x.shape[-1]))
        y = sliding_window_inference(x, roi, 1, self.model, overlap=self.overlap, mode=self.blend)
        return y[0].clamp_(0.0, 1.0).cpu().numpy()

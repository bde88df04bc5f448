"""One size for every image: resize or center-crop on request, else a clear error at the first misfit.

Resizing is bilinear with antialiasing on float [0, 1] pixels, then rounded back to the source's integer
type (masks: nearest neighbour). Cropping takes the centered H x W window (an image smaller than that is an
error). Without a target size, the first image fixes (C, H, W) and any other shape is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gradprom.platform.data.readers.base import Sample
from gradprom.platform.errors import DataError

FIT_MODES = ("resize", "crop")
_SCALE = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) stored image -> (C, *size), same dtype (bilinear, antialiased)."""
    if img.shape[1:] == tuple(size):
        return img
    scale = _SCALE[img.dtype.name]
    x = torch.from_numpy(img.astype(np.float32) / scale)[None]
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1).numpy()
    return y.astype(np.float32) if scale == 1.0 else np.rint(y * scale).astype(img.dtype)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) class ids -> size, nearest neighbour."""
    if mask.shape == tuple(size):
        return mask
    x = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(x, size=size, mode="nearest")[0, 0].numpy().astype(mask.dtype)


def center_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centered size window of the last two axes."""
    h, w = arr.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return np.ascontiguousarray(arr[..., top:top + size[0], left:left + size[1]])


@dataclass
class Fitter:
    """Brings every sample to one (C, H, W); `size` None keeps the first sample's size and refuses others."""

    size: tuple[int, int] | None = None
    mode: str = "resize"
    shape: tuple[int, int, int] | None = None  # (C, H, W) every image must have after fitting
    first: str = ""
    # how to fix a size misfit: `data convert` has --size; `train` on a folder has not, so it says to convert
    size_fix: str = "pass --size H W (with --resize or --crop) to bring every image to one size"

    def __call__(self, s: Sample) -> Sample:
        if self.size is not None and s.image.shape[1:] != tuple(self.size):
            if self.mode == "resize":
                s.image = resize_image(s.image, self.size)
                s.mask = None if s.mask is None else resize_mask(s.mask, self.size)
            else:
                h, w = s.image.shape[1:]
                if h < self.size[0] or w < self.size[1]:
                    raise DataError(f"{s.source}: image of {h}x{w} is smaller than the crop {self.size[0]}x"
                                    f"{self.size[1]}; use --resize, or a smaller --size.")
                s.image = center_crop(s.image, self.size)
                s.mask = None if s.mask is None else center_crop(s.mask, self.size)
        if self.shape is None:
            self.shape, self.first = tuple(s.image.shape), s.source
        elif tuple(s.image.shape) != self.shape:
            what = "channels" if s.image.shape[0] != self.shape[0] else "size"
            fix = ("convert grayscale and RGB sources separately" if what == "channels"
                   else self.size_fix)
            raise DataError(f"{s.source}: image of shape (C, H, W) = {tuple(s.image.shape)} differs in {what} from "
                            f"{self.shape} ({self.first}); all images need one shape: {fix}.")
        return s

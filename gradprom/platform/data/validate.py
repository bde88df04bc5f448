"""Validation of image, label and mask arrays as a source hands them over (npz files, the MedMNIST reader):
each problem is a DataError naming the file, the array and what is expected."""

from __future__ import annotations

import numpy as np

from gradprom.platform.errors import DataError

MIN_SIDE = 8  # the smallest image side any source may have
# The most classes a recognizer is built for: a label is also the size of the head (label + 1 outputs), so a
# stray huge label (2**40) would allocate terabytes; real medical class counts are far below this.
MAX_CLASSES = 1000


def too_many_classes(label: int, where: str) -> DataError:
    """The error for a label at or above MAX_CLASSES (the head would need label + 1 outputs)."""
    text = str(label) if len(str(label)) <= 40 else str(label)[:40] + "..."
    return DataError(f"{where}: label {text} would need a recognizer with {text} + 1 outputs; GradProm trains at "
                     f"most {MAX_CLASSES} classes (labels 0..{MAX_CLASSES - 1}): relabel the classes as 0..K-1.")


def check_images(arr: np.ndarray, path: str, key: str) -> np.ndarray:
    """(N, H, W[, C]) array of any numeric dtype -> (N, C, H, W) float32 in [0, 1]."""
    where = f"{path}: array `{key}`"
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3):
        arr = np.moveaxis(arr, -1, 1)
    else:
        raise DataError(f"{where} has shape {arr.shape}; expected (N, H, W) grayscale or (N, H, W, C) with C = 1 "
                        f"(grayscale) or 3 (RGB).")
    if len(arr) == 0:
        raise DataError(f"{where} is empty; each split needs at least one image.")
    if min(arr.shape[-2:]) < MIN_SIDE:
        raise DataError(f"{where} has images of {arr.shape[-2]}x{arr.shape[-1]} pixels; expected at least 8x8.")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{where} has dtype {arr.dtype}; expected uint8, uint16 or float in [0, 1].")
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argwhere(bad.reshape(len(arr), -1).any(1))[0, 0])
        raise DataError(f"{where} holds NaN/Inf pixels (first in image {i}); clean or drop those images.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{where} has float pixels in [{lo:.4g}, {hi:.4g}]; expected floats scaled to [0, 1] "
                        f"(or uint8/uint16 images).")
    return arr


def check_labels(arr: np.ndarray, n: int, path: str, key: str) -> np.ndarray:
    """(N,) or (N, 1) integer class labels -> (N,) int64."""
    where = f"{path}: array `{key}`"
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2 and arr.shape[1] > 1:
        raise DataError(f"{where} has shape {arr.shape}: multi-label targets are not supported; expected one "
                        f"class per image, shape (N,) or (N, 1).")
    if arr.ndim != 1:
        raise DataError(f"{where} has shape {arr.shape}; expected (N,) or (N, 1) integer class labels.")
    if len(arr) != n:
        raise DataError(f"{where} has {len(arr)} labels for {n} images; expected one label per image.")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError(f"{where} holds non-integer or NaN labels; expected integer classes 0..K-1.")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{where} has dtype {arr.dtype}; expected integer class labels.")
    arr = arr.astype(np.int64)
    if len(arr) and arr.min() < 0:
        i = int(np.argmin(arr))
        raise DataError(f"{where} has label {arr[i]} at index {i}; labels must be in 0..K-1.")
    if len(arr) and arr.max() >= MAX_CLASSES:
        i = int(np.argmax(arr))
        raise too_many_classes(int(arr[i]), f"{where} at index {i}")
    return arr


def check_masks(arr: np.ndarray, images: np.ndarray, path: str, key: str) -> np.ndarray:
    """(N, H, W) integer class masks matching the images -> int64."""
    where = f"{path}: array `{key}`"
    if arr.shape != (images.shape[0], *images.shape[-2:]):
        raise DataError(f"{where} has shape {arr.shape}; expected (N, H, W) = "
                        f"{(images.shape[0], *images.shape[-2:])} to match the images.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{where} has dtype {arr.dtype}; expected integer class masks.")
    if arr.min() < 0:
        raise DataError(f"{where} has negative mask values; expected classes 0..K-1 (0 = background).")
    return arr.astype(np.int64)

"""What every reader yields: one `Sample` per 2-D image, in one of the three stored pixel types.

Stored pixel types (the store keeps them as they are; training scales them to float32 in [0, 1]):
  uint8  -> x / 255        uint16 -> x / 65535        float32 -> as is (must lie in [0, 1])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gradprom.platform.data.validate import MAX_CLASSES, too_many_classes
from gradprom.platform.errors import DataError

STORED_DTYPES = ("uint8", "uint16", "float32")
SPLITS = ("train", "val", "test")


@dataclass
class Sample:
    """One image (C, H, W) in a stored dtype, with its label and/or mask and where it came from."""

    image: np.ndarray
    source: str  # file relative to the source root, plus a position ("a.npz#train[3]", "ct.dcm#frame=2")
    label: int | None = None
    mask: np.ndarray | None = None  # (H, W) uint8 class ids
    split: str | None = None  # the source's own split, when it has one
    site: str | None = None  # the source's own site (a CSV column), when it has one
    group: str = ""  # samples of one group (a volume, a multi-frame file) always land in the same split


@dataclass
class ReadOptions:
    """Reader options; each reader uses the ones that concern it and records them as provenance."""

    labels: str | None = None  # labels CSV (folder: default <folder>/labels.csv; dicom: optional)
    window: tuple[float, float] | None = None  # DICOM (center, width); None = the file's own (else min-max)
    axis: int = 0  # DICOM volumes: slice along this axis (0 = frames/slices, 1 = rows, 2 = columns)
    extra: dict[str, Any] = field(default_factory=dict)


class Reader(Protocol):
    """A source of Samples; `total` (the number of images, when known up front) drives the progress bar."""

    name: str
    version: str
    total: int | None

    def __iter__(self) -> Iterator[Sample]: ...

    def provenance(self) -> dict[str, Any]: ...


def as_stored(arr: np.ndarray, where: str) -> np.ndarray:
    """Check a (C, H, W) image is a stored pixel type (float32 finite in [0, 1]) and make it contiguous."""
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise DataError(f"{where}: image of shape {arr.shape}; expected grayscale or RGB (C = 1 or 3).")
    if min(arr.shape[1:]) < 8:
        raise DataError(f"{where}: image of {arr.shape[1]}x{arr.shape[2]} pixels; expected at least 8x8.")
    if arr.dtype.name not in STORED_DTYPES:
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        else:
            raise DataError(f"{where}: pixels of type {arr.dtype}; expected uint8, uint16 or float in [0, 1].")
    if arr.dtype == np.float32:
        if not np.isfinite(arr).all():
            raise DataError(f"{where}: image holds NaN/Inf pixels; expected finite values in [0, 1].")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{where}: float pixels in [{lo:.4g}, {hi:.4g}]; expected [0, 1] (or uint8/uint16).")
    return np.ascontiguousarray(arr)


def check_label(value: Any, where: str) -> int:
    """A class label: a non-negative integer (floats like 2.0 are accepted)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: label {str(value)[:40]!r} is not a number; expected an integer class "
                        f"0..K-1.") from None
    if not np.isfinite(f) or f != int(f) or f < 0:
        raise DataError(f"{where}: label {str(value)[:40]!r}; expected an integer class 0..K-1 (non-negative).")
    if f >= MAX_CLASSES:
        raise too_many_classes(int(f), where)
    return int(f)


def check_mask(mask: np.ndarray, shape: tuple[int, int], where: str) -> np.ndarray:
    """A segmentation mask: (H, W) non-negative integers below 256, the image's size."""
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.shape != tuple(shape):
        raise DataError(f"{where}: mask of shape {mask.shape}; expected {tuple(shape)} to match the image.")
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"{where}: mask of type {mask.dtype}; expected integer class ids.")
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 255):
        raise DataError(f"{where}: mask values in [{int(mask.min())}, {int(mask.max())}]; expected classes 0..255.")
    return np.ascontiguousarray(mask.astype(np.uint8))


def relative(path: Path, root: Path) -> str:
    """`path` relative to `root` (the source root), as POSIX text; the name alone when root is the file."""
    try:
        rel = path.relative_to(root)
        return rel.as_posix() if str(rel) != "." else path.name
    except ValueError:
        return path.name

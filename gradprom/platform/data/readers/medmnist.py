"""MedMNIST `.npz` reader: the arrays are validated exactly as `data/npz.load_npz` does (data/validate.py), then
stored as they are (uint8/uint16 kept; floats in [0, 1] as float32), one Sample per image, split by the file's own
keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gradprom.platform.data.npz import read_npz_arrays
from gradprom.platform.data.readers.base import SPLITS, ReadOptions, Sample
from gradprom.platform.data.validate import check_images, check_labels, check_masks
from gradprom.platform.errors import DataError

VERSION = "1"


class MedMNISTReader:
    """Samples of a MedMNIST-style .npz (keys `train_images`, `train_labels`, `val_*`, `test_*`, `*_masks`)."""

    name = "medmnist"
    version = VERSION

    def __init__(self, path: str | Path, options: ReadOptions | None = None):
        self.path = Path(path)
        self.arrays = read_npz_arrays(self.path)
        if not any(f"{s}_images" in self.arrays for s in SPLITS):
            raise DataError(f"Data file {str(self.path)!r} has no `*_images` array (found {sorted(self.arrays)}); "
                            f"expected the MedMNIST keys train_images, train_labels, val_*, test_*.")
        self.splits = [s for s in SPLITS if f"{s}_images" in self.arrays]
        self.total = sum(len(self.arrays[f"{s}_images"]) for s in self.splits)

    def provenance(self) -> dict[str, Any]:
        """What was read and how."""
        return {"splits": self.splits, "arrays": sorted(self.arrays)}

    def __iter__(self) -> Iterator[Sample]:
        where = str(self.path)
        for split in self.splits:
            key = f"{split}_images"
            raw = self.arrays[key]
            scaled = check_images(raw, where, key)  # the same validation load_npz applies; (N, C, H, W)
            images = np.moveaxis(raw, -1, 1) if raw.ndim == 4 else raw[:, None]
            if raw.dtype not in (np.uint8, np.uint16):
                images = scaled  # floats: validated and made float32 in [0, 1]
            labels = masks = None
            if f"{split}_labels" in self.arrays:
                labels = check_labels(self.arrays[f"{split}_labels"], len(images), where, f"{split}_labels")
            if f"{split}_masks" in self.arrays:
                masks = check_masks(self.arrays[f"{split}_masks"], scaled, where, f"{split}_masks")
                if masks.size and masks.max() > 255:
                    raise DataError(f"{where}: array `{split}_masks` has class {int(masks.max())}; expected 0..255.")
            for i in range(len(images)):
                yield Sample(image=np.ascontiguousarray(images[i]), source=f"{self.path.name}#{split}[{i}]",
                             label=None if labels is None else int(labels[i]),
                             mask=None if masks is None else masks[i].astype(np.uint8), split=split,
                             group=f"{split}[{i}]")

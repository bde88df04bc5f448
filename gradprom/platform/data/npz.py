"""MedMNIST-style `.npz` files as a data source (keys `train_images`, `train_labels`, `val_*`, `test_*`; images
(N, H, W) or (N, H, W, C) with C = 1 or 3, uint8/uint16 or float in [0, 1]; labels (N,) or (N, 1); for
segmentation, `*_masks` (N, H, W)). Every problem is reported as a DataError naming the file and the array."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from gradprom.platform.data.dataset import SPLITS, DataInfo, ImageSet
from gradprom.platform.data.holdout import split_holdout
from gradprom.platform.data.validate import check_images, check_labels, check_masks
from gradprom.platform.errors import DataError

log = logging.getLogger(__name__)


def read_npz_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a .npz file, or a DataError naming the file when it is missing, damaged or not an .npz."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Data file {str(p)!r} does not exist; expected a MedMNIST-style .npz "
                        f"(train_images, train_labels, val_*, test_*) or `phantoms`.")
    if not zipfile.is_zipfile(p):
        raise DataError(f"Data file {str(p)!r} could not be read as .npz: it is not a NumPy zip of named arrays "
                        f"(it may be truncated, a single-array .npy, or another format). Expected the MedMNIST keys "
                        f"train_images, train_labels, val_*, test_*.")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise DataError(f"Data file {str(p)!r} could not be read as .npz ({type(e).__name__}: {e}); it may be "
                        f"truncated or not a NumPy archive.") from None
    except Exception as e:  # zlib.error and friends from a damaged member
        raise DataError(f"Data file {str(p)!r} is damaged ({type(e).__name__}: {e}).") from None
    return arrays


def load_npz(path: str | Path, task: str, val_fraction: float = 0.1,
             seed: int = 0) -> tuple[dict[str, ImageSet], DataInfo]:
    """Read a MedMNIST-style .npz into train/val/test ImageSets, validating every array."""
    p = Path(path)
    arrays = read_npz_arrays(p)
    for need in ("train_images", "test_images"):
        if need not in arrays:
            raise DataError(f"Data file {str(p)!r} has no `{need}` array (found {sorted(arrays)}); expected the "
                            f"MedMNIST keys train_images, train_labels, val_images, val_labels, test_images, "
                            f"test_labels.")
    out: dict[str, ImageSet] = {}
    for split in SPLITS:
        if f"{split}_images" not in arrays:
            continue
        images = check_images(arrays[f"{split}_images"], str(p), f"{split}_images")
        labels = masks = None
        if f"{split}_labels" in arrays:
            labels = check_labels(arrays[f"{split}_labels"], len(images), str(p), f"{split}_labels")
        elif task == "classification":
            raise DataError(f"Data file {str(p)!r} has `{split}_images` but no `{split}_labels`; classification "
                            f"needs one label per image.")
        if f"{split}_masks" in arrays:
            masks = check_masks(arrays[f"{split}_masks"], images, str(p), f"{split}_masks")
        elif task == "segmentation":
            raise DataError(f"Data file {str(p)!r} has no `{split}_masks` array; segmentation needs a mask "
                            f"(N, H, W) per split.")
        out[split] = ImageSet(images, labels, masks)
    shapes = {s: d.images.shape[1:] for s, d in out.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"Data file {str(p)!r} mixes image shapes across splits {shapes}; expected one (C, H, W).")
    if "val" not in out:
        out["train"], out["val"] = split_holdout(out["train"], val_fraction, seed)
        log.info("%s has no val_* arrays: held out %d of train as validation", p, len(out["val"]))
    num_classes = seg_classes = 0
    if task == "classification" or all(d.labels is not None for d in out.values()):
        num_classes = int(max(d.labels.max() for d in out.values() if d.labels is not None)) + 1
        if task == "classification" and num_classes < 2:
            raise DataError(f"Data file {str(p)!r} has a single class; classification needs at least two.")
    if task == "segmentation":
        seg_classes = max(int(max(d.masks.max() for d in out.values())) + 1, 2)
    c, h, w = out["train"].images.shape[1:]
    return out, DataInfo(c, (h, w), num_classes, seg_classes, str(p))

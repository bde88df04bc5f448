"""Datasets: clean images (+ labels and/or masks) and the seeded degradation that makes the network input.

Sources: the embedded phantoms, a GradProm Parquet store (a directory with `_store.json`, see store.py; read
whole, or streamed by row groups when large), an image folder with a labels CSV (readers/folder.py), or a
MedMNIST-style `.npz` (keys `train_images`, `train_labels`, `val_*`,
`test_*`; images (N, H, W) or (N, H, W, C) with C = 1 or 3, uint8/uint16 or float in [0, 1]; labels (N,) or
(N, 1); for segmentation, `*_masks` (N, H, W)). Every problem is reported as a DataError naming the file,
the array and what is expected.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .degradations import Degradation, parse_degradation
from .errors import ConfigError, DataError
from .phantoms import SEG_CLASSES, make_phantoms

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclass
class ImageSet:
    """One split in memory: images (N, C, H, W) float32 in [0, 1]; labels (N,) and/or masks (N, H, W); the
    site of each image (N,) where the source has sites (a store, a folder with a `site` column)."""

    images: np.ndarray
    labels: np.ndarray | None = None
    masks: np.ndarray | None = None
    sites: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class DataInfo:
    """What the models need to know about the data."""

    channels: int
    image_size: tuple[int, int]
    num_classes: int  # classification classes
    seg_classes: int  # segmentation classes (incl. background); 0 when there are no masks
    source: str

    def num_outputs(self, task: str) -> int:
        """Logits the recognizer needs for `task`."""
        return self.num_classes if task == "classification" else self.seg_classes


class EnhancementDataset(Dataset):
    """Items {x_lq, x_hq, y, index}; x_lq is made on the fly, seeded by (seed, split, epoch, index).

    Training splits draw fresh noise each epoch (`set_epoch`); val/test use a fixed draw, so every
    evaluation sees the same degraded images.
    """

    def __init__(self, data: ImageSet, degradation: Degradation, task: str, seed: int, split: str):
        if task == "classification" and data.labels is None:
            raise DataError(f"the {split} split has no labels, but task 'classification' needs them")
        if task == "segmentation" and data.masks is None:
            raise DataError(f"the {split} split has no masks, but task 'segmentation' needs them "
                            f"(a `{split}_masks` array of shape (N, H, W))")
        self.data, self.degradation, self.task, self.seed, self.split = data, degradation, task, seed, split
        self.images = torch.from_numpy(data.images)
        self.targets = torch.from_numpy(data.labels if task == "classification" else data.masks)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the noise draw of a training epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def generator(self, index: int) -> torch.Generator:
        """The per-sample generator: depends only on (seed, split, epoch, index), not on batching or workers."""
        return sample_generator(self.seed, self.split, self.epoch if self.split == "train" else 0, index)

    def __getitem__(self, index: int) -> dict:
        x_hq = self.images[index]
        x_lq = self.degradation(x_hq, self.generator(index))
        return {"x_lq": x_lq, "x_hq": x_hq, "y": self.targets[index], "index": index}


def sample_generator(seed: int, split: str, epoch: int, index: int) -> torch.Generator:
    """The degradation generator of one sample; the in-memory and the streaming datasets share it."""
    state = np.random.SeedSequence([seed, _SPLIT_CODE[split], epoch, index]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# --------------------------------------------------------------------------------------------------------
def _check_images(arr: np.ndarray, path: str, key: str) -> np.ndarray:
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
    if min(arr.shape[-2:]) < 8:
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


def _check_labels(arr: np.ndarray, n: int, path: str, key: str) -> np.ndarray:
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
    return arr


def _check_masks(arr: np.ndarray, images: np.ndarray, path: str, key: str) -> np.ndarray:
    where = f"{path}: array `{key}`"
    if arr.shape != (images.shape[0], *images.shape[-2:]):
        raise DataError(f"{where} has shape {arr.shape}; expected (N, H, W) = "
                        f"{(images.shape[0], *images.shape[-2:])} to match the images.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{where} has dtype {arr.dtype}; expected integer class masks.")
    if arr.min() < 0:
        raise DataError(f"{where} has negative mask values; expected classes 0..K-1 (0 = background).")
    return arr.astype(np.int64)


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


def load_npz(path: str | Path, task: str, val_fraction: float = 0.1, seed: int = 0) -> tuple[dict[str, ImageSet], DataInfo]:
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
        images = _check_images(arrays[f"{split}_images"], str(p), f"{split}_images")
        labels = masks = None
        if f"{split}_labels" in arrays:
            labels = _check_labels(arrays[f"{split}_labels"], len(images), str(p), f"{split}_labels")
        elif task == "classification":
            raise DataError(f"Data file {str(p)!r} has `{split}_images` but no `{split}_labels`; classification "
                            f"needs one label per image.")
        if f"{split}_masks" in arrays:
            masks = _check_masks(arrays[f"{split}_masks"], images, str(p), f"{split}_masks")
        elif task == "segmentation":
            raise DataError(f"Data file {str(p)!r} has no `{split}_masks` array; segmentation needs a mask "
                            f"(N, H, W) per split.")
        out[split] = ImageSet(images, labels, masks)
    shapes = {s: d.images.shape[1:] for s, d in out.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"Data file {str(p)!r} mixes image shapes across splits {shapes}; expected one (C, H, W).")
    if "val" not in out:
        out["train"], out["val"] = _split_off(out["train"], val_fraction, seed)
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


def _split_off(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    n = len(data)
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 1:
        raise DataError(f"the train split has {n} images; too few to hold out a validation split.")
    perm = np.random.default_rng(seed).permutation(n)
    take = lambda idx: ImageSet(data.images[idx], None if data.labels is None else data.labels[idx],  # noqa: E731
                                None if data.masks is None else data.masks[idx],
                                None if data.sites is None else data.sites[idx])
    return take(np.sort(perm[n_val:])), take(np.sort(perm[:n_val]))


def load_phantom_splits(cfg) -> tuple[dict[str, ImageSet], DataInfo]:
    """Train/val/test phantoms with disjoint index ranges (so no image is shared between splits)."""
    d = cfg.data
    sizes = {"train": d.num_train, "val": d.num_val, "test": d.num_test}
    offsets = {"train": 0, "val": 10_000_000, "test": 20_000_000}
    out = {}
    for split in SPLITS:
        ph = make_phantoms(sizes[split], cfg.seed, d.image_size, d.num_classes, d.texture_contrast, offsets[split])
        out[split] = ImageSet(ph.images, ph.labels, ph.masks)
    return out, DataInfo(1, (d.image_size, d.image_size), d.num_classes, SEG_CLASSES, "phantoms")


def load_splits(cfg) -> tuple[dict[str, ImageSet], DataInfo]:
    """The three splits named by `cfg.data.source`: "phantoms", a store directory, an image folder or a .npz."""
    from . import store_data  # imports this module

    src = cfg.data.source
    if src != "phantoms" and Path(src).is_dir():
        return store_data.load_dir_splits(cfg)
    if cfg.data.sites is not None:
        raise ConfigError(f"config field `data.sites`: got {cfg.data.sites}; only a store or an image folder has "
                          f"sites, but `data.source` is {src!r}.")
    if src == "phantoms":
        return load_phantom_splits(cfg)
    if src.endswith(".npz") or Path(src).is_file():
        return load_npz(src, cfg.task, cfg.data.val_fraction, cfg.seed)
    raise DataError(f"config field `data.source`: got {src!r}; expected 'phantoms', a store directory (made by "
                    f"`gradprom data convert`), an image folder with a labels CSV, or a MedMNIST-style .npz file "
                    f"(it does not exist).")


def check_labels_fit(sets: dict[str, ImageSet], info: DataInfo, task: str) -> None:
    """Labels/masks must lie in 0..K-1 for the recognizer's K outputs."""
    k = info.num_outputs(task)
    for split, d in sets.items():
        arr = d.labels if task == "classification" else d.masks
        if arr is not None and arr.size and int(arr.max()) >= k:
            raise DataError(f"{info.source}: the {split} split has {'label' if task == 'classification' else 'mask value'} "
                            f"{int(arr.max())}, outside 0..{k - 1}.")


def build_datasets(cfg) -> tuple[dict[str, EnhancementDataset], DataInfo, Degradation]:
    """Datasets for the three splits, degraded as `cfg.data.degradation` says (a large store is streamed:
    then they are `StreamingEnhancementDataset`s with the same items and the same `set_epoch`)."""
    from . import store_data  # imports this module

    degradation = parse_degradation(cfg.data.degradation)
    streamed = store_data.streaming_datasets(cfg, degradation)
    if streamed is not None:
        datasets, info = streamed
    else:
        sets, info = load_splits(cfg)
        check_labels_fit(sets, info, cfg.task)
        datasets = {s: EnhancementDataset(sets[s], degradation, cfg.task, cfg.seed, s) for s in SPLITS}
    h, w = info.image_size
    if h % degradation.scale or w % degradation.scale:
        raise DataError(f"{info.source}: images of {h}x{w} cannot be down-sampled by {degradation.scale} "
                        f"(`data.degradation: {degradation}`); the side must be divisible by it.")
    return datasets, info, degradation

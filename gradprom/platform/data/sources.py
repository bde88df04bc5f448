"""`data.source` resolved: the embedded phantoms, a GradProm Parquet store (whole, or streamed by row groups),
an image folder with a labels CSV, or a MedMNIST-style `.npz`; and the three degraded datasets built from it.
A source without a validation split holds one out of train by the one rule in holdout.py."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from gradprom.platform.config import Config
from gradprom.platform.data.dataset import SPLITS, DataInfo, EnhancementDataset, ImageSet
from gradprom.platform.data.degradations import Degradation, parse_degradation
from gradprom.platform.data.folder import load_folder_splits
from gradprom.platform.data.npz import load_npz
from gradprom.platform.data.phantom_splits import load_phantom_splits
from gradprom.platform.data.validate import MAX_CLASSES, too_many_classes
from gradprom.platform.errors import ConfigError, DataError, cut
from gradprom.platform.store.format import is_store
from gradprom.platform.store.load import load_store_splits, streaming_datasets

log = logging.getLogger(__name__)


def load_dir_splits(cfg: Config) -> tuple[dict[str, ImageSet], DataInfo]:
    """A directory as `data.source`: a store (whole, in memory) or an image folder with labels.csv."""
    src = Path(cfg.data.source)
    if is_store(src):
        return load_store_splits(cfg)
    if (src / "labels.csv").is_file():
        return load_folder_splits(cfg)
    if any(src.glob("site=*")):
        raise DataError(f"{str(src)!r} looks like a store but has no _store.json: it is incomplete (an interrupted "
                        f"conversion?); convert again into a new directory.")
    raise DataError(f"config field `data.source`: {str(src)!r} is a directory but neither a store (no _store.json) "
                    f"nor an image folder (no labels.csv with columns file, label[, mask][, site][, split]).")


def load_splits(cfg: Config) -> tuple[dict[str, ImageSet], DataInfo]:
    """The three splits named by `cfg.data.source`: "phantoms", a store directory, an image folder or a .npz."""
    src = cfg.data.source
    if src != "phantoms" and Path(src).is_dir():
        return load_dir_splits(cfg)
    if cfg.data.sites is not None:
        raise ConfigError(f"config field `data.sites`: got {cfg.data.sites}; only a store or an image folder has "
                          f"sites, but `data.source` is {cut(src)}.")
    if src == "phantoms":
        return load_phantom_splits(cfg)
    if src.endswith(".npz") or Path(src).is_file():
        return load_npz(src, cfg.task, cfg.data.val_fraction, cfg.seed)
    raise DataError(f"config field `data.source`: got {cut(src)}; expected 'phantoms', a store directory (made by "
                    f"`gradprom data convert`), an image folder with a labels CSV, or a MedMNIST-style .npz file "
                    f"(it does not exist).")


def check_class_count(info: DataInfo, task: str) -> None:
    """Refuse a head of more than MAX_CLASSES outputs before any model is built (a label of 2**40 would
    allocate terabytes)."""
    k = info.num_outputs(task)
    if k > MAX_CLASSES:
        what = "label" if task == "classification" else "mask value"
        raise too_many_classes(k - 1, f"{info.source}: the largest {what}")


def warn_unseen_classes(sets: dict[str, ImageSet], info: DataInfo, task: str) -> None:
    """Sparse labels (say 0, 1, 2 and 7) give a head of max + 1 outputs, some of which no image ever trains:
    say which class ids never occur, so a mislabelled image or a non-contiguous numbering is noticed (a real
    class that is merely absent from these images stays allowed)."""
    if task != "classification":
        return
    seen = set()
    for d in sets.values():
        if d.labels is not None:
            seen.update(np.unique(d.labels).tolist())
    unseen = sorted(set(range(info.num_classes)) - seen)
    if unseen:
        shown_ids = ", ".join(map(str, unseen[:20])) + (f", ... ({len(unseen)} in all)" if len(unseen) > 20 else "")
        log.warning("%s: labels go up to %d, so the recognizer gets %d outputs, but class ids %s occur in no "
                    "split; if the labels are not numbered 0..K-1 on purpose, relabel them contiguously.",
                    info.source, info.num_classes - 1, info.num_classes, shown_ids)


def check_labels_fit(sets: dict[str, ImageSet], info: DataInfo, task: str) -> None:
    """Labels/masks must lie in 0..K-1 for the recognizer's K outputs."""
    k = info.num_outputs(task)
    for split, d in sets.items():
        arr = d.labels if task == "classification" else d.masks
        if arr is not None and arr.size and int(arr.max()) >= k:
            raise DataError(f"{info.source}: the {split} split has "
                            f"{'label' if task == 'classification' else 'mask value'} "
                            f"{int(arr.max())}, outside 0..{k - 1}.")


def build_datasets(cfg: Config) -> tuple[dict[str, EnhancementDataset], DataInfo, Degradation]:
    """Datasets for the three splits, degraded as `cfg.data.degradation` says (a large store is streamed:
    then they are `StreamingEnhancementDataset`s with the same items and the same `set_epoch`)."""
    degradation = parse_degradation(cfg.data.degradation)
    streamed = streaming_datasets(cfg, degradation)
    if streamed is not None:
        datasets, info = streamed
        check_class_count(info, cfg.task)
    else:
        sets, info = load_splits(cfg)
        check_class_count(info, cfg.task)
        check_labels_fit(sets, info, cfg.task)
        warn_unseen_classes(sets, info, cfg.task)
        datasets = {s: EnhancementDataset(sets[s], degradation, cfg.task, cfg.seed, s) for s in SPLITS}
    h, w = info.image_size
    if h % degradation.scale or w % degradation.scale:
        raise DataError(f"{info.source}: images of {h}x{w} cannot be down-sampled by {degradation.scale} "
                        f"(`data.degradation: {degradation}`); the side must be divisible by it.")
    return datasets, info, degradation

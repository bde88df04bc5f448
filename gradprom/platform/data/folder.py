"""An image folder with a labels CSV (readers/folder.py) read straight into memory as the three splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradprom.platform.config import Config
from gradprom.platform.data.dataset import SPLITS, DataInfo, ImageSet
from gradprom.platform.data.holdout import split_holdout
from gradprom.platform.data.readers import Fitter, FolderReader, ReadOptions
from gradprom.platform.data.readers.split import SplitRule
from gradprom.platform.errors import DataError
from gradprom.platform.store.format import SCALE


def load_folder_splits(cfg: Config) -> tuple[dict[str, ImageSet], DataInfo]:
    """An image folder with labels.csv read straight into memory (one size required: no resizing here)."""
    src = Path(cfg.data.source)
    fitter = Fitter(size_fix=f"train reads a folder as it is, so convert it first: `gradprom data convert {src} STORE "
                             f"--size H W` (with --resize or --crop), then train with --data STORE")
    reader, rule = FolderReader(src, ReadOptions()), SplitRule.parse("auto", cfg.seed)
    rows: dict[str, list] = {s: [] for s in SPLITS}
    for s in reader:
        site = s.site or src.name
        if cfg.data.sites is None or site in cfg.data.sites:
            rows[rule(fitter(s))].append((s, site))
    if cfg.data.sites is not None and not any(rows.values()):
        raise DataError(f"Image folder {str(src)!r} has no images of sites {cfg.data.sites} "
                        f"(config field `data.sites`).")
    sets: dict[str, ImageSet] = {}
    for split, items in rows.items():
        if not items:
            continue
        images = np.stack([np.divide(s.image, np.float32(SCALE[s.image.dtype.name]), dtype=np.float32)
                           for s, _ in items])
        labels = np.array([s.label for s, _ in items], np.int64) if all(s.label is not None for s, _ in items) else None
        masks = (np.stack([s.mask for s, _ in items]).astype(np.int64)
                 if all(s.mask is not None for s, _ in items) else None)
        sets[split] = ImageSet(images, labels, masks, np.array([site for _, site in items]))
    for split in ("train", "test"):
        if split not in sets:
            raise DataError(f"Image folder {str(src)!r} has no {split} images: give its labels CSV a `split` column "
                            f"(train/val/test), or convert it with `gradprom data convert --split-by random`.")
    if "val" not in sets:
        sets["train"], sets["val"] = split_holdout(sets["train"], cfg.data.val_fraction, cfg.seed)
    c, h, w = sets["train"].images.shape[1:]
    k = int(max(d.labels.max() for d in sets.values() if d.labels is not None)) + 1 if all(
        d.labels is not None for d in sets.values()) else 0
    seg = max(int(max(d.masks.max() for d in sets.values())) + 1, 2) if all(
        d.masks is not None for d in sets.values()) else 0
    if cfg.task == "classification" and k < 2:
        raise DataError(f"Image folder {str(src)!r}: classification needs labels of at least two classes.")
    return sets, DataInfo(c, (h, w), k, seg if cfg.task == "segmentation" else 0, str(src))

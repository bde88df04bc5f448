"""The embedded phantoms as a data source: train/val/test splits with disjoint index ranges, read through the
on-disk cache. Needs neither pyarrow nor a store (the GPU check builds its data from here)."""

from __future__ import annotations

from gradprom.platform.config import Config
from gradprom.platform.data.dataset import SPLITS, DataInfo, ImageSet
from gradprom.platform.data.phantom_cache import cached_phantoms
from gradprom.platform.data.phantoms import SEG_CLASSES


def load_phantom_splits(cfg: Config) -> tuple[dict[str, ImageSet], DataInfo]:
    """Train/val/test phantoms with disjoint index ranges (so no image is shared between splits); cached on disk
    (phantom_cache.py), so a second command with the same parameters does not draw them again."""

    d = cfg.data
    sizes = {"train": d.num_train, "val": d.num_val, "test": d.num_test}
    offsets = {"train": 0, "val": 10_000_000, "test": 20_000_000}
    out = {}
    for split in SPLITS:
        ph = cached_phantoms(sizes[split], cfg.seed, d.image_size, d.num_classes, d.texture_contrast, offsets[split],
                             d.phantom_version)
        out[split] = ImageSet(ph.images, ph.labels, ph.masks)
    return out, DataInfo(1, (d.image_size, d.image_size), d.num_classes, SEG_CLASSES, "phantoms")

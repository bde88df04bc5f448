"""Write each hospital's images to its own .npz, so a real SuperNode can be pointed at its own data file."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from gradprom.platform.atomic import atomic_path
from gradprom.platform.config import Config

from .config import FedConfig
from .partition import load_site

log = logging.getLogger(__name__)


def export_sites(cfg: Config, fed: FedConfig, out: Path) -> list[Path]:
    """DIR/hospital-<k>.npz with train_* and val_* arrays (test_* repeats val_*: the engine's .npz reader
    requires a test split, and a site never uses it)."""
    paths = []
    for k in range(fed.hospitals):
        site = load_site(cfg, fed, k)
        arrays: dict[str, np.ndarray] = {}
        for split, data in (("train", site.train), ("val", site.val), ("test", site.val)):
            arrays[f"{split}_images"] = (data.images[:, 0] if data.images.shape[1] == 1
                                         else np.moveaxis(data.images, 1, -1))
            if data.labels is not None:
                arrays[f"{split}_labels"] = data.labels
            if data.masks is not None:
                arrays[f"{split}_masks"] = data.masks
        path = out / f"{site.name}.npz"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        log.info("%s: %d train / %d val images -> %s", site.name, len(site.train), len(site.val), path)
        paths.append(path)
    return paths

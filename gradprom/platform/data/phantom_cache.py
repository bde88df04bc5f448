"""Phantoms cached on disk: generating the default 1024+256+256 takes seconds on every command, yet they depend
only on their parameters. One .npz per (generator version, seed, size, classes, contrast, count, offset) in
the user cache directory: $GRADPROM_CACHE_DIR, else $XDG_CACHE_HOME/gradprom, else ~/.cache/gradprom.
Written atomically; a file that cannot be read (or holds other shapes) is regenerated. An unwritable cache
directory only costs the speed-up."""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from gradprom.platform.atomic import atomic_path
from gradprom.platform.data.phantoms import PhantomSet, make_phantoms

log = logging.getLogger(__name__)
# bump when make_phantom's output changes for the same parameters, so old cache files are not reused
GENERATOR_VERSION = 1


def cache_dir() -> Path:
    """Where GradProm caches generated data."""
    if os.environ.get("GRADPROM_CACHE_DIR"):
        return Path(os.environ["GRADPROM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gradprom"


def cache_file(n: int, seed: int, size: int, num_classes: int, texture_contrast: float, offset: int,
               version: int = 1) -> Path:
    """The cache file of one phantom set (every parameter, the phantom version and the cache format in its key)."""
    key = (f"v{GENERATOR_VERSION}-p{version}-seed{seed}-size{size}-k{num_classes}-c{texture_contrast!r}-n{n}"
           f"-off{offset}")
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    return cache_dir() / "phantoms" / f"phantoms-{digest}.npz"


def _read(path: Path, n: int, size: int) -> PhantomSet | None:
    try:
        with np.load(path) as z:
            ph = PhantomSet(z["images"], z["labels"], z["masks"].astype(np.int64))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        log.warning("phantom cache file %s is unreadable (%s); regenerating it", path, type(e).__name__)
        return None
    if ph.images.shape != (n, 1, size, size) or ph.labels.shape != (n,) or ph.masks.shape != (n, size, size):
        log.warning("phantom cache file %s holds other shapes; regenerating it", path)
        return None
    return ph


def cached_phantoms(n: int, seed: int, size: int = 64, num_classes: int = 3, texture_contrast: float = 0.06,
                    offset: int = 0, version: int = 1) -> PhantomSet:
    """`make_phantoms(...)`, read from the cache when an intact file is there, else generated and stored."""
    path = cache_file(n, seed, size, num_classes, texture_contrast, offset, version)
    if path.is_file():
        ph = _read(path, n, size)
        if ph is not None:
            return ph
    ph = make_phantoms(n, seed, size, num_classes, texture_contrast, offset, version)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            # masks hold 0..2: uint8 on disk is an eighth of int64 (the write is most of a cold start's cost)
            np.savez(f, images=ph.images, labels=ph.labels, masks=ph.masks.astype(np.uint8))
    except OSError as e:
        log.debug("phantom cache not written (%s): %s", path, e)
    return ph

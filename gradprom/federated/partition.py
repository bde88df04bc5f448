"""Hospitals: turn any dataset the engine reads into N sites that differ the way real sites do.

Each site differs in scanner/dose (its own degradation), case mix (label shares ~ Dirichlet(alpha)) and size
(shares proportional to (1 + size_skew)^-k). A store with a `site` column can keep its real sites instead.
Everything is seeded by the run's seed, so every process (server, each ClientApp) computes the same partition;
a site may instead bring its own .npz (`federated.sites.<k>.data`, or the SuperNode's `data-path`).
The server keeps the dataset's val and test splits, which no site sees, for the global model.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np

from gradprom.platform.config import Config
from gradprom.platform.data.dataset import DataInfo, ImageSet
from gradprom.platform.data.degradations import parse_degradation
from gradprom.platform.data.npz import load_npz
from gradprom.platform.data.sources import load_splits
from gradprom.platform.errors import ConfigError, DataError

from .config import FedConfig


@dataclass
class Site:
    """One hospital's images and scanner."""

    index: int
    train: ImageSet
    val: ImageSet
    degradation: str
    source: str  # "partition of <data>" or the site's own file

    @property
    def name(self) -> str:
        return site_name(self.index)

    def class_mix(self, num_classes: int) -> list[float]:
        """Share of each class among the site's training images (empty without labels)."""
        if self.train.labels is None or num_classes < 1:
            return []
        counts = np.bincount(self.train.labels, minlength=num_classes)[:num_classes]
        return [float(c) / max(int(counts.sum()), 1) for c in counts]


def site_name(index: int) -> str:
    """hospital-<index>: the name used in tables, logs and error messages."""
    return f"hospital-{index}"


def site_degradation(cfg: Config, fed: FedConfig, k: int) -> str:
    """Site k's degradation: its override, else its point on the noise ramp, else the run's degradation."""
    over = fed.sites.get(k)
    if over is not None and over.degradation:
        spec = over.degradation
    elif fed.noise_min is not None:
        frac = k / (fed.hospitals - 1) if fed.hospitals > 1 else 0.0
        spec = f"gaussian:sigma={fed.noise_min + frac * (fed.noise_max - fed.noise_min):.4g}"
    else:
        spec = cfg.data.degradation
    try:
        parse_degradation(spec)
    except ConfigError as e:
        raise ConfigError(f"{site_name(k)}: {e}") from None
    return spec


# -------------------------------------------------------------------------------------------------------
def _take(data: ImageSet, idx: np.ndarray) -> ImageSet:
    idx = np.sort(idx)
    pick = lambda a: None if a is None else a[idx]  # noqa: E731
    return ImageSet(data.images[idx], pick(data.labels), pick(data.masks), pick(data.sites))


def split_indices(labels: np.ndarray | None, n: int, hospitals: int, alpha: float, size_skew: float,
                  seed: int) -> list[np.ndarray]:
    """Indices of each site: per class, Dirichlet(alpha) shares times the size weights; at least 2 per site."""
    if n < 2 * hospitals:
        raise DataError(f"{n} training images cannot be split into {hospitals} hospitals (each needs at least 2 "
                        f"for its own train and validation images); use more images or fewer hospitals.")
    rng = np.random.default_rng([seed, 7, hospitals])
    size = (1.0 + size_skew) ** -np.arange(hospitals)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    parts: list[list[int]] = [[] for _ in range(hospitals)]
    for idx in groups:
        idx = rng.permutation(idx)
        share = rng.dirichlet(np.full(hospitals, alpha)) * size
        cuts = (np.cumsum(share / share.sum())[:-1] * len(idx)).round().astype(int)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].extend(chunk.tolist())
    # a skewed draw can leave a site (almost) empty: move images from the largest site
    for k in range(hospitals):
        while len(parts[k]) < 2:
            big = max(range(hospitals), key=lambda j: len(parts[j]))
            parts[k].append(parts[big].pop())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def _train_val(data: ImageSet, fraction: float, seed: int, k: int) -> tuple[ImageSet, ImageSet]:
    n = len(data)
    n_val = min(max(1, int(round(n * fraction))), n - 1)
    perm = np.random.default_rng([seed, 11, k]).permutation(n)
    return _take(data, perm[n_val:]), _take(data, perm[:n_val])


@functools.lru_cache(maxsize=2)
def _load(cfg_json: str) -> tuple[dict[str, ImageSet], DataInfo]:
    """The dataset, read once per process (ClientApps in one Ray actor share it)."""
    from gradprom.platform.config import build_config

    return load_splits(build_config(json.loads(cfg_json)))


def load_dataset(cfg: Config) -> tuple[dict[str, ImageSet], DataInfo]:
    """The run's train/val/test splits and their DataInfo (cached per process)."""
    return _load(json.dumps(cfg.to_dict(), sort_keys=True))


def _store_site_indices(train: ImageSet, fed: FedConfig) -> list[np.ndarray]:
    if train.sites is None:
        raise ConfigError("config field `federated.use_store_sites`: the data has no `site` column; use a store "
                          "written by `gradprom data convert` with sites, or let the partitioner split it.")
    names = sorted(set(train.sites.tolist()))
    if len(names) != fed.hospitals:
        raise ConfigError(f"config field `federated.hospitals`: got {fed.hospitals}, but the store has "
                          f"{len(names)} sites {names}; set hospitals to {len(names)}.")
    return [np.flatnonzero(train.sites == s) for s in names]


def load_site_file(path: str, cfg: Config, k: int, expect: DataInfo | None = None) -> tuple[ImageSet, ImageSet]:
    """A site's own .npz (train_* and val_* arrays): a DataError naming the site and the file otherwise, also
    when its images or labels do not fit the federation's model (`expect`)."""
    try:
        sets, info = load_npz(path, cfg.task, cfg.data.val_fraction, cfg.seed)
    except DataError as e:
        raise DataError(f"{site_name(k)}: cannot use its data file {path!r}: {e}") from None
    if expect is not None:
        if (info.channels, info.image_size) != (expect.channels, expect.image_size):
            raise DataError(f"{site_name(k)}: its data file {path!r} holds {info.channels}-channel "
                            f"{info.image_size[0]}x{info.image_size[1]} images; the federation's model takes "
                            f"{expect.channels}-channel {expect.image_size[0]}x{expect.image_size[1]} images.")
        if info.num_outputs(cfg.task) > expect.num_outputs(cfg.task):
            raise DataError(f"{site_name(k)}: its data file {path!r} has {info.num_outputs(cfg.task)} classes; the "
                            f"federation's model has {expect.num_outputs(cfg.task)}.")
    return sets["train"], sets["val"]


def load_site(cfg: Config, fed: FedConfig, k: int, data_path: str | None = None,
              expect: DataInfo | None = None) -> Site:
    """Site k's train/val images and degradation (its own file when one is given, checked against `expect`)."""
    over = fed.sites.get(k)
    own = data_path or (over.data if over is not None else None)
    deg = site_degradation(cfg, fed, k)
    if own:
        train, val = load_site_file(own, cfg, k, expect)
        return Site(k, train, val, deg, own)
    sets, _ = load_dataset(cfg)
    train = sets["train"]
    if fed.use_store_sites:
        parts = _store_site_indices(train, fed)
    else:
        parts = split_indices(train.labels if cfg.task == "classification" else None, len(train), fed.hospitals,
                              fed.dirichlet_alpha, fed.size_skew, cfg.seed)
    tr, va = _train_val(_take(train, parts[k]), fed.site_val_fraction, cfg.seed, k)
    return Site(k, tr, va, deg, f"partition of {cfg.data.source}")


def info_to_config(info: DataInfo) -> dict[str, int]:
    """What a site needs to build the federation's models, sent with every round (no central data needed)."""
    return {"channels": info.channels, "height": info.image_size[0], "width": info.image_size[1],
            "num-classes": info.num_classes, "seg-classes": info.seg_classes}


def info_from_config(conf) -> DataInfo:
    """The federation's DataInfo from a round's config (see info_to_config)."""
    return DataInfo(int(conf["channels"]), (int(conf["height"]), int(conf["width"])), int(conf["num-classes"]),
                    int(conf["seg-classes"]), "federation")


def describe_sites(cfg: Config, fed: FedConfig) -> list[dict]:
    """One row per site: site, num_train, num_val, class_mix, degradation, source, error (sites.parquet)."""
    _, info = load_dataset(cfg)
    rows = []
    for k in range(fed.hospitals):
        try:
            s = load_site(cfg, fed, k)
            rows.append({"site": s.name, "num_train": len(s.train), "num_val": len(s.val),
                         "class_mix": s.class_mix(info.num_classes), "degradation": s.degradation,
                         "source": s.source, "error": None})
        except DataError as e:  # the federation goes on without a site whose data cannot be read
            rows.append({"site": site_name(k), "num_train": 0, "num_val": 0, "class_mix": [],
                         "degradation": site_degradation(cfg, fed, k), "source": "", "error": str(e)})
    return rows

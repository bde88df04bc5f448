"""A store as `data.source`: the same ImageSets and DataInfo as the other sources (read whole into memory),
or, for a large store, streaming datasets that read it by row groups (`data.streaming`)."""

from __future__ import annotations

import logging
import resource
from pathlib import Path

import numpy as np

from gradprom.platform.config import Config
from gradprom.platform.data.dataset import SPLITS, DataInfo, ImageSet
from gradprom.platform.data.degradations import Degradation
from gradprom.platform.data.holdout import holdout_mask
from gradprom.platform.errors import ConfigError, DataError
from gradprom.platform.store.format import Store, decode_images, decode_masks, is_store
from gradprom.platform.store.stream import StreamingEnhancementDataset

log = logging.getLogger(__name__)


# ---- stores -------------------------------------------------------------------------------------------------
def _task_parts(store: Store, task: str, sites: list[str] | None) -> dict[str, list]:
    """The selected parts per split, checked to carry what the task needs and to cover train and test."""
    out = {s: store.select(s, sites) for s in SPLITS}
    which = f" for sites {sites}" if sites else ""
    for split in ("train", "test"):
        if not out[split]:
            raise DataError(f"Store {str(store.path)!r} has no {split} images{which}; convert a source with a "
                            f"{split} split (see --split-by).")
    need = "label" if task == "classification" else "mask"
    for p in (p for ps in out.values() for p in ps):
        if not (p.has_labels if need == "label" else p.has_masks):
            raise DataError(f"Store {str(store.path)!r}: partition {p.path!r} (site {p.site!r}, split {p.split!r}) has "
                            f"no {need}s, but task {task!r} needs them.")
    return out


def _info(store: Store, task: str, sites: list[str] | None) -> DataInfo:
    c, h, w = store.shape
    k = store.num_classes(sites)
    if task == "classification" and k < 2:
        raise DataError(f"Store {str(store.path)!r} has a single class; classification needs at least two.")
    return DataInfo(c, (h, w), k, store.seg_classes(sites) if task == "segmentation" else 0, str(store.path))


def read_store_split(store: Store, parts: list, task: str) -> ImageSet:
    """The parts' rows in memory, decoded to float32 [0, 1], with labels and/or masks and sites."""
    n = sum(p.rows for p in parts)
    c, h, w = store.shape
    images = np.empty((n, c, h, w), np.float32)
    labels = np.empty(n, np.int64) if all(p.has_labels for p in parts) else None
    masks = np.empty((n, h, w), np.int64) if task == "segmentation" else None
    sites = np.empty(n, dtype=object)
    off = 0
    columns = ["image", "dtype", "channels", "height", "width", "label"] + (["mask"] if masks is not None else [])
    for part, table in store.iter_tables(parts, columns):
        k, where = table.num_rows, f"{store.path}/{part.path}"
        decode_images(table, store.shape, where, out=images[off:off + k])
        if labels is not None:
            labels[off:off + k] = table.column("label").to_numpy(zero_copy_only=False)
        if masks is not None:
            masks[off:off + k] = decode_masks(table, store.shape, where)
        sites[off:off + k] = part.site
        off += k
    return ImageSet(images, labels, masks, sites.astype(str))


def load_store_splits(cfg: Config) -> tuple[dict[str, ImageSet], DataInfo]:
    """All selected rows of a store in memory (a store without val holds out `data.val_fraction` of train)."""
    store, sites = Store(cfg.data.source), cfg.data.sites
    parts = _task_parts(store, cfg.task, sites)
    sets = {s: read_store_split(store, parts[s], cfg.task) for s in SPLITS if parts[s]}
    if "val" not in sets:
        keep_val = holdout_mask(len(sets["train"]), cfg.data.val_fraction, cfg.seed)
        sets["train"], sets["val"] = sets["train"].subset(~keep_val), sets["train"].subset(keep_val)
        log.info("%s has no val split: held out %d of train as validation", store.path, len(sets["val"]))
    return sets, _info(store, cfg.task, sites)


def _available_bytes() -> float:
    """Memory this process may still use: MemAvailable, and the headroom under RLIMIT_AS when one is set."""
    avail = float("inf")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmSize:"):
                    avail = min(avail, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    return avail


def use_streaming(cfg: Config, store: Store) -> bool:
    """`data.streaming` resolved: "auto" streams when the store would not fit comfortably in memory."""
    mode = cfg.data.streaming
    if mode != "auto":
        return mode == "on"
    need = store.decoded_bytes(None, cfg.data.sites)
    limit = min(cfg.data.stream_above_mb * 2**20, 0.5 * _available_bytes())
    if need > limit:
        log.info("streaming %s: its images take %.0f MB as float32, over the %.0f MB limit", store.path,
                 need / 2**20, limit / 2**20)
        return True
    return False


def streaming_datasets(cfg: Config,
                       degradation: Degradation) -> tuple[dict[str, StreamingEnhancementDataset], DataInfo] | None:
    """Streaming datasets of the three splits when `data.source` is a store to stream; else None."""
    src = cfg.data.source
    if src == "phantoms" or not is_store(src):
        if cfg.data.streaming == "on":
            raise ConfigError(f"config field `data.streaming`: 'on' reads a store by row groups, but `data.source` "
                              f"{src!r} is not a store; convert it with `gradprom data convert` first.")
        return None
    store = Store(src)
    if not use_streaming(cfg, store):
        return None
    sites = cfg.data.sites
    parts = _task_parts(store, cfg.task, sites)
    info = _info(store, cfg.task, sites)
    k = info.num_outputs(cfg.task)
    col = "label_max" if cfg.task == "classification" else "mask_max"
    for p in (p for ps in parts.values() for p in ps):
        if getattr(p, col) is not None and getattr(p, col) >= k:
            raise DataError(f"{info.source}: the {p.split} split has {'label' if col == 'label_max' else 'mask value'} "
                            f"{getattr(p, col)}, outside 0..{k - 1}.")
    make = lambda split, ps, shuffle, keep=None: StreamingEnhancementDataset(  # noqa: E731
        store, ps, degradation, cfg.task, cfg.seed, split, shuffle, cfg.data.shuffle_buffer, keep)
    out = {"train": make("train", parts["train"], True), "test": make("test", parts["test"], False)}
    if parts["val"]:
        out["val"] = make("val", parts["val"], False)
    else:  # the same seeded hold-out as the in-memory path
        keep_val = holdout_mask(store.rows("train", sites), cfg.data.val_fraction, cfg.seed)
        out["train"] = make("train", parts["train"], True, ~keep_val)
        out["val"] = make("train", parts["train"], False, keep_val)
        out["val"].split = "val"
    return out, info


__all__ = ["load_store_splits", "read_store_split", "streaming_datasets", "use_streaming"]

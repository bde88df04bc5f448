"""Both sides of the training split's Ray Dataset: the driver makes it (a store's Parquet part files, or an
in-memory split as rows of the store's schema plus an `index` column), and each worker decodes it back into
an ImageSet in split order. One schema, one file."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from gradprom.platform.config import Config
from gradprom.platform.data.dataset import ImageSet
from gradprom.platform.data.holdout import holdout_mask
from gradprom.platform.distributed.shards import read_row_groups, row_group_items
from gradprom.platform.errors import TrainingError
from gradprom.platform.store.format import Store, decode_images, decode_masks, is_store
from gradprom.platform.store.stream import StreamingEnhancementDataset

STORE_COLUMNS = ["image", "dtype", "channels", "height", "width", "label", "mask"]


def train_source(cfg: Config, train: Any) -> tuple[dict[str, Any], Any]:
    """(spec for the workers, a function making the Ray Dataset, or None when the workers read the store
    themselves) of the training split; `train` is the local loop's training dataset (streamed or in memory)."""
    src = cfg.data.source
    sharding = cfg.distributed.sharding
    if src != "phantoms" and is_store(src):
        store = Store(src)
        sites = cfg.data.sites
        parts = store.select("train", sites)
        # exact + a store the local loop streams: every worker streams it itself (distributed/shards.py)
        streamed = isinstance(train, StreamingEnhancementDataset)
        paths = [os.path.normpath(os.path.abspath(p)) for p in store.part_paths("train", sites)]
        starts = np.concatenate([[0], np.cumsum([p.rows for p in parts])]).tolist()
        rows = int(starts[-1])
        holdout = None
        if not store.select("val", sites):  # the local loop's seeded hold-out of train as validation
            holdout = holdout_mask(rows, cfg.data.val_fraction, cfg.seed).tolist()
        spec = {"shape": list(store.shape), "rows": rows, "path_start": dict(zip(paths, starts)), "holdout": holdout,
                "sharding": sharding, "stream": streamed and sharding == "exact",
                "train_rows": rows - (int(np.sum(holdout)) if holdout is not None else 0)}
        columns = [c for c in STORE_COLUMNS if c != ("mask" if cfg.task == "classification" else "label")]
        if spec["stream"]:
            return spec, None
        if sharding == "streaming":
            items = row_group_items(store, parts)

            def make_groups():
                import ray.data
                return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                    read_row_groups, batch_size=1, batch_format="pyarrow",
                    fn_kwargs={"columns": columns, "holdout": holdout})
            return spec, make_groups

        def make():
            import ray.data
            return ray.data.read_parquet(paths, columns=columns, include_paths=True)
        return spec, make

    # in memory (phantoms, .npz, image folder): rows in the store's schema plus their position
    table = memory_table(train.data, cfg.task)
    spec = {"shape": list(train.data.images.shape[1:]), "rows": len(train.data), "holdout": None,
            "sharding": sharding, "stream": False, "train_rows": len(train.data)}

    def make():
        import ray.data
        return ray.data.from_arrow(table)
    return spec, make


def memory_table(data: ImageSet, task: str) -> pa.Table:
    """An in-memory split as rows of the store's schema (float32 pixels) plus an `index` column."""
    n = len(data)
    c, h, w = data.images.shape[1:]
    table = pa.table({
        "image": pa.array([img.tobytes() for img in np.ascontiguousarray(data.images, np.float32)], pa.binary()),
        "dtype": pa.array(["float32"] * n), "channels": pa.array([c] * n, pa.int32()),
        "height": pa.array([h] * n, pa.int32()), "width": pa.array([w] * n, pa.int32()),
        "index": pa.array(np.arange(n, dtype=np.int64)),
    })
    if task == "classification":
        return table.append_column("label", pa.array(data.labels.astype(np.int64)))
    return table.append_column("mask", pa.array([m.astype(np.uint8).tobytes() for m in data.masks], pa.binary()))


def read_train_split(it, spec: dict[str, Any], task: str) -> ImageSet:
    """Decode the Ray Data stream of the training split into memory, rows in split order.

    Rows carry their split position either as an `index` column (in-memory sources) or as the part file they
    came from (`path`, stores): rows of one file arrive in file order, and files are placed by the manifest.
    """
    shape = tuple(spec["shape"])
    tables = list(it.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0))
    rows = sum(t.num_rows for t in tables)
    c, h, w = shape
    images = np.empty((rows, c, h, w), np.float32)
    targets = np.empty(rows, np.int64) if task == "classification" else np.empty((rows, h, w), np.int64)
    index = np.empty(rows, np.int64)
    seen: dict[str, int] = {}
    off = 0
    for t in tables:
        k = t.num_rows
        decode_images(t, shape, "training split (Ray Data)", out=images[off:off + k])
        targets[off:off + k] = (t.column("label").to_numpy(zero_copy_only=False) if task == "classification"
                                else decode_masks(t, shape, "training split (Ray Data)"))
        if "index" in t.column_names:
            index[off:off + k] = t.column("index").to_numpy(zero_copy_only=False)
        else:
            for j, p in enumerate(t.column("path").to_pylist()):
                key = os.path.normpath(p)
                index[off + j] = spec["path_start"][key] + seen.get(key, 0)
                seen[key] = seen.get(key, 0) + 1
        off += k
    order = np.argsort(index, kind="stable")
    if rows != spec["rows"] or not np.array_equal(index[order], np.arange(rows)):
        raise TrainingError(f"The training split read through Ray Data has {rows} rows (expected {spec['rows']}) "
                            f"or misses positions; the store changed while training?")
    images, targets = images[order], targets[order]
    if spec.get("holdout") is not None:  # a store without a val split: the same seeded hold-out as the local loop
        keep = ~np.asarray(spec["holdout"], bool)
        images, targets = images[keep], targets[keep]
    labels, masks = (targets, None) if task == "classification" else (None, targets)
    return ImageSet(images, labels, masks)

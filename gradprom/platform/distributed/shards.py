"""How Ray Train workers share the training split (`distributed.sharding`), for a split too large to hold whole.

exact      every worker walks the same seeded stream as the local loop's streaming loader (the store's row
           groups in a per-epoch order, through the same bounded shuffle buffer), cuts it into the same global
           batches and makes items (degradation, collate) only of its own slice of each. The global batches, and
           so the gate decisions, do not depend on the number of workers; each worker holds one row group plus
           the buffer, and reads the store directly (it must be on a path every node sees).
streaming  Ray Data's `streaming_split(N, equal=True)` of a dataset of the store's row groups (one read task
           each, rows tagged with their split position): each worker sees only its rows, through a bounded local
           shuffle buffer. Faster to feed, but which rows form a batch depends on N and on timing.

An in-memory source (phantoms, .npz, image folder) or a store the local loop would load whole keeps the
in-memory path in `exact` mode (worker.global_batches / rank_batches).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import default_collate

from gradprom.platform.build import epoch_seed, steps_in_epoch
from gradprom.platform.config import Config
from gradprom.platform.data.dataset import sample_generator
from gradprom.platform.data.degradations import Degradation
from gradprom.platform.epoch import Batch
from gradprom.platform.errors import TrainingError
from gradprom.platform.store.format import Store, decode_images, decode_masks
from gradprom.platform.store.stream import StreamingEnhancementDataset

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# exact: one seeded stream, walked by every worker
def streamed_train_set(cfg: Config, degradation: Degradation) -> StreamingEnhancementDataset:
    """The local loop's streamed training split (same parts, hold-out, buffer and seeds)."""
    from gradprom.platform.store.load import streaming_datasets

    on = cfg.model_copy(deep=True)
    on.data.streaming = "on"  # the driver already decided to stream; a worker's free memory must not undo it
    streamed = streaming_datasets(on, degradation)
    assert streamed is not None
    return streamed[0]["train"]


def exact_steps(ds: StreamingEnhancementDataset, cfg: Config) -> int:
    """Global batches of an epoch of the stream (the local loader's count, capped by max_steps_per_epoch)."""
    return steps_in_epoch(math.ceil(len(ds) / cfg.data.batch_size), cfg)


def exact_stream_batches(ds: StreamingEnhancementDataset, cfg: Config, epoch: int, rank: int, world: int,
                         reducer: Any, device: torch.device,
                         before_step: Callable[[int], None] | None = None) -> Iterator[Batch]:
    """This rank's piece of every global batch of the epoch's stream; items are made only for the piece."""
    ds.set_epoch(epoch)
    stream, steps = ds.rows(), exact_steps(ds, cfg)
    for k in range(steps):
        rows = list(islice(stream, cfg.data.batch_size))
        if not rows:
            return
        if len(rows) < world:
            log.info("the last batch has %d images for %d workers; skipped", len(rows), world)
            continue
        mine = torch.tensor_split(torch.arange(len(rows)), world)[rank]
        batch = default_collate([ds.item(*rows[int(i)]) for i in mine])
        reducer.weight = world * len(mine) / len(rows)
        if before_step is not None:
            before_step(k)
        yield batch["x_lq"].to(device), batch["x_hq"].to(device), batch["y"].to(device)


# ---------------------------------------------------------------------------------------------------------
# streaming: Ray Data's streaming split of the row groups
def row_group_items(store: Store, parts: list) -> list[dict]:
    """One item per row group: where it is and the split position of its first row."""
    items, start = [], 0
    for part, group, rows in store.row_groups(parts):
        items.append({"path": str(store.path / part.path), "group": group, "start": start})
        start += rows
    return items


def read_row_groups(items: pa.Table, columns: list[str], holdout: list[bool] | None) -> pa.Table:
    """Ray Data map_batches: the row groups named by `items`, each row tagged with its split `index` (rows held
    out as validation dropped)."""
    import pyarrow.parquet as pq

    tables = []
    for path, group, start in zip(*(items.column(c).to_pylist() for c in ("path", "group", "start")), strict=True):
        t = pq.ParquetFile(path).read_row_group(group, columns=columns)
        index = np.arange(start, start + t.num_rows, dtype=np.int64)
        t = t.append_column("index", pa.array(index))
        if holdout is not None:
            t = t.filter(pa.array(~np.asarray(holdout, bool)[index]))
        tables.append(t)
    return pa.concat_tables(tables)


def streaming_steps(spec: dict[str, Any], cfg: Config, world: int) -> int:
    """Local batches of an epoch on each worker (equal splits: every rank takes the same number of steps)."""
    per_rank = spec["train_rows"] // world
    return steps_in_epoch(math.ceil(per_rank / local_batch(cfg, world)), cfg)


def local_batch(cfg: Config, world: int) -> int:
    """Images per worker and step under `streaming` (the global batch is this times the workers)."""
    return max(cfg.data.batch_size // world, 1)


def streaming_batches(shard: Any, spec: dict[str, Any], cfg: Config, degradation: Degradation, epoch: int,
                      world: int, reducer: Any, device: torch.device,
                      before_step: Callable[[int], None] | None = None) -> Iterator[Batch]:
    """This worker's batches of its streaming split for one epoch, degraded with the same per-image seeds."""
    shape = tuple(spec["shape"])
    steps = streaming_steps(spec, cfg, world)
    reducer.weight = 1.0  # equal splits, equal local batches
    it = shard.iter_batches(batch_size=local_batch(cfg, world), batch_format="pyarrow", drop_last=False,
                            local_shuffle_buffer_size=cfg.data.shuffle_buffer,
                            local_shuffle_seed=epoch_seed(cfg, epoch), prefetch_batches=1)
    done = 0
    for k, table in enumerate(it):
        if k >= steps:
            break
        done += 1
        x_hq = torch.from_numpy(decode_images(table, shape, "training split (Ray Data)"))
        if cfg.task == "classification":
            y = torch.from_numpy(table.column("label").to_numpy(zero_copy_only=False).astype(np.int64))
        else:
            y = torch.from_numpy(decode_masks(table, shape, "training split (Ray Data)"))
        index = table.column("index").to_numpy(zero_copy_only=False)
        x_lq = torch.stack([degradation(x, sample_generator(cfg.seed, "train", epoch, int(i)))
                            for x, i in zip(x_hq, index, strict=True)])
        if before_step is not None:
            before_step(k)
        yield x_lq.to(device), x_hq.to(device), y.to(device)
    if done < steps:
        raise TrainingError(f"This worker's streaming split ended after {done} of {steps} batches; the splits "
                            f"are not equal (distributed.sharding: streaming).")

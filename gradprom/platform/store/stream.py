"""Streaming a store too large for memory: an IterableDataset that reads row groups one at a time.

Order: the row groups are shuffled by (seed, split, epoch), and their rows pass through a shuffle buffer of at
most `buffer` images (also bounded to about 256 MB), drawn from by the same seeded generator; so an epoch's
order depends only on (seed, epoch) and memory stays at one row group plus the buffer. Val/test are read in
store order. Degradations are seeded per (seed, split, epoch, index) exactly as `EnhancementDataset` does,
with `index` the row's position in the split, so the same row gets the same noise whichever path reads it.
With DataLoader workers, each worker takes every n-th row group.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from gradprom.platform.data.dataset import SPLIT_CODE, sample_generator
from gradprom.platform.data.degradations import Degradation
from gradprom.platform.errors import DataError
from gradprom.platform.store.format import Part, Store, decode_images, decode_masks

log = logging.getLogger(__name__)
BUFFER_BYTES = 256 << 20


class StreamingEnhancementDataset(IterableDataset):
    """Items {x_lq, x_hq, y, index} streamed from a store's parts; `set_epoch` picks the order and noise."""

    def __init__(self, store: Store, parts: list[Part], degradation: Degradation, task: str, seed: int, split: str,
                 shuffle: bool, buffer: int = 2048, keep: np.ndarray | None = None):
        need = "label" if task == "classification" else "mask"
        for p in parts:
            if not (p.has_labels if need == "label" else p.has_masks):
                raise DataError(f"Store {str(store.path)!r}: partition {p.path!r} (site {p.site!r}, split {p.split!r}) "
                                f"has no {need}s, but task {task!r} needs them.")
        self.store, self.degradation, self.task, self.seed, self.split = store, degradation, task, seed, split
        self.shuffle, self.column = shuffle, need
        self.groups = store.row_groups(parts)  # (part, row group, rows), in store order
        self.starts = np.concatenate([[0], np.cumsum([n for _, _, n in self.groups])]).astype(np.int64)
        self.keep = keep  # bool per row of the split (None = all): a hold-out for stores without a val split
        self.n = int(self.starts[-1] if keep is None else keep.sum())
        c, h, w = store.shape
        self.buffer = max(1, min(buffer, BUFFER_BYTES // (c * h * w * 4)))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the order and noise draw of a training epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def _epoch(self) -> int:
        return self.epoch if self.split == "train" else 0

    def item(self, index: int, x: np.ndarray, y: np.ndarray) -> dict:
        """The training item of one row: its seeded degradation, as `EnhancementDataset` makes it."""
        x_hq = torch.from_numpy(x)
        x_lq = self.degradation(x_hq, sample_generator(self.seed, self.split, self._epoch(), index))
        return {"x_lq": x_lq, "x_hq": x_hq, "y": torch.as_tensor(y), "index": index}

    def _rows(self, order: np.ndarray, rng: np.random.Generator | None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(index, image, target) of the row groups in `order`; rows within a group shuffled when rng is given."""
        columns = ["image", "dtype", "channels", "height", "width", self.column]
        for g in order:
            part, rg, _ = self.groups[g]
            table = self.store.read_row_group(part, rg, columns)
            where = f"{self.store.path}/{part.path} row group {rg}"
            x = decode_images(table, self.store.shape, where)
            if self.column == "label":
                y = table.column("label").to_numpy(zero_copy_only=False)
                if table.column("label").null_count:
                    raise DataError(f"{where}: some rows have no label; classification needs one per image.")
                y = y.astype(np.int64)
            else:
                y = decode_masks(table, self.store.shape, where)
            idx = self.starts[g] + np.arange(len(x))
            rows = np.arange(len(x)) if rng is None else rng.permutation(len(x))
            for i in rows:
                if self.keep is None or self.keep[idx[i]]:
                    # copies, so a buffered image does not pin its whole row group in memory
                    yield int(idx[i]), x[i].copy(), np.array(y[i])
            del x, y, table

    def __iter__(self) -> Iterator[dict]:
        for row in self.rows():
            yield self.item(*row)

    def rows(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """The epoch's (index, image, target) rows in streamed order, before degradation: Ray Train workers in
        `distributed.sharding: exact` all walk this same order and make items only of their slice."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        if not self.shuffle:
            yield from self._rows(np.arange(len(self.groups))[wid::nw], None)
            return
        rng = np.random.default_rng([self.seed, SPLIT_CODE[self.split], self._epoch(), wid])
        order = np.random.default_rng([self.seed, SPLIT_CODE[self.split], self._epoch()]).permutation(len(self.groups))
        buf: list[tuple[int, np.ndarray, np.ndarray]] = []
        for row in self._rows(order[wid::nw], rng):
            if len(buf) < self.buffer:
                buf.append(row)
                continue
            j = int(rng.integers(len(buf)))
            out, buf[j] = buf[j], row
            yield out
        for j in rng.permutation(len(buf)):
            yield buf[j]

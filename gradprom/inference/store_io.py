"""Enhance a store by row batches: one function turns a batch of store rows into enhanced rows (the local path
and every Ray Data actor call it, so both give the same bytes), and `StoreOutput` publishes them as a new store
with the same schema, the input's conversion history and one more provenance entry for the enhancement.

A batch is an Arrow table with the store columns plus `site` and `split`; the result has the same columns plus
`error` (None, or the one-line reason that row could not be enhanced; its image is then empty).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gradprom.platform.data.readers.base import Sample
from gradprom.platform.errors import DataError
from gradprom.platform.store.format import FORMAT, FORMAT_VERSION, SCHEMA, Store, content_hash, decode_images
from gradprom.platform.store.write import StoreWriter

from .enhance import ImageEnhancer
from .sources import Failure
from .writers import from_unit, upsample_nearest

OUT_SCHEMA = SCHEMA.append(pa.field("site", pa.string())).append(pa.field("split", pa.string())).append(
    pa.field("error", pa.string()))


def store_batches(store: Store) -> Iterator[pa.Table]:
    """Every row group of the store's published parts, with its `site` and `split` columns."""
    for part, table in store.iter_tables(store.parts):
        n = table.num_rows
        yield table.append_column("site", pa.array([part.site] * n, pa.string())).append_column(
            "split", pa.array([part.split] * n, pa.string()))


def enhance_batch(enhancer: ImageEnhancer, batch: pa.Table, shape: tuple[int, int, int]) -> pa.Table:
    """Enhanced rows of a batch (images `scale` times larger, masks repeated to match, new content hashes)."""
    c, h, w = shape
    s = enhancer.scale
    images = decode_images(batch.select([f.name for f in SCHEMA]), shape, "store batch")
    out: list[dict[str, Any]] = []
    for i, row in enumerate(batch.to_pylist()):
        where = f"store row {row['source']!r} (site {row['site']}, split {row['split']})"
        try:
            y = from_unit(enhancer(images[i], where), row["dtype"])
        except DataError as e:
            out.append({**row, "image": b"", "hash": "", "error": str(e)})
            continue
        mask = row["mask"]
        if mask is not None and s > 1:
            mask = upsample_nearest(np.frombuffer(mask, np.uint8).reshape(h, w), s, (0, 1)).tobytes()
        out.append({**row, "image": y.tobytes(), "height": h * s, "width": w * s, "mask": mask,
                    "hash": content_hash(y), "error": None})
    return pa.Table.from_pylist(out, schema=OUT_SCHEMA)


class StoreOutput:
    """A new store at `out` for enhanced rows: `add(table)` writes the good rows, returns the failed ones."""

    def __init__(self, out: Path, src: Store, scale: int, provenance: dict[str, Any]):
        c, h, w = src.shape
        self.shape = (c, h * scale, w * scale)
        self.src = src
        self.writer = StoreWriter(out, src.sites()[0] if src.sites() else "enhanced", provenance)

    def __enter__(self) -> StoreOutput:
        if self.writer.path.exists() and any(self.writer.path.iterdir()):
            raise DataError(f"--out {str(self.writer.path)!r} is not empty; an enhanced store goes into a new "
                            f"directory.")
        self.writer.__enter__()
        # the new store keeps the input's conversion history; its parts point at the enhancement entry
        self.writer.manifest = {"format": FORMAT, "version": FORMAT_VERSION, "shape": list(self.shape),
                                "schema": {f.name: str(f.type) for f in SCHEMA}, "parts": [],
                                "converts": copy.deepcopy(self.src.manifest.get("converts", []))}
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.writer.__exit__(exc_type, exc, tb)

    def add(self, table: pa.Table) -> tuple[int, list[Failure]]:
        """Write the rows without an error; returns (rows written, failures)."""
        c, h, w = self.shape
        done, failed = 0, []
        for row in table.to_pylist():
            if row["error"]:
                failed.append(Failure(row["source"], row["error"]))
                continue
            img = np.frombuffer(row["image"], np.dtype(row["dtype"])).reshape(c, h, w)
            mask = None if row["mask"] is None else np.frombuffer(row["mask"], np.uint8).reshape(h, w)
            self.writer.add(Sample(image=img, source=row["source"], label=row["label"], mask=mask),
                            row["split"], row["site"])
            done += 1
        return done, failed

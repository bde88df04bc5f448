"""The Parquet image store: layout, schema, manifest, and reading it back (DESIGN.md §3 "Storage").

STORE/
  _store.json                         the manifest, written last and atomically: format, schema, image shape,
                                      every part file (site, split, rows, label/mask ranges) and the provenance
                                      of every conversion (source, reader and version, options, time)
  _common_metadata                    the Arrow schema (Parquet metadata file, for other Parquet readers)
  site=<site>/split=<split>/part-*.parquet    hive-partitioned parts, zstd, row groups of a few MB

One row per 2-D image: `image` (raw bytes of the C-order (C, H, W) array), `dtype` (uint8 | uint16 | float32),
`channels`, `height`, `width`, `label` (nullable int64), `mask` (nullable raw (H, W) uint8 bytes), `source`
(file and position), `hash` (blake2b-128 of dtype, shape and bytes). `site` and `split` are the partition keys.

Only the part files listed in the manifest belong to the store, so a part written by a conversion that did not
finish is never read (and `gradprom data check` reports it). Pixels are scaled to float32 [0, 1] on reading:
uint8 / 255, uint16 / 65535, float32 as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from gradprom.platform.errors import DataError, cut

log = logging.getLogger(__name__)
MANIFEST = "_store.json"
COMMON_METADATA = "_common_metadata"
FORMAT, FORMAT_VERSION = "gradprom-store", 1
SCHEMA = pa.schema([
    ("image", pa.binary()), ("dtype", pa.string()), ("channels", pa.int32()), ("height", pa.int32()),
    ("width", pa.int32()), ("label", pa.int64()), ("mask", pa.binary()), ("source", pa.string()),
    ("hash", pa.string()),
])
SCALE = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}


def content_hash(image: np.ndarray) -> str:
    """blake2b-128 of an image's dtype, shape and bytes: equal pixels give equal hashes across sources."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.dtype.name}|{'x'.join(map(str, image.shape))}|".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def is_store(path: str | Path) -> bool:
    """A directory with a store manifest."""
    return (Path(path) / MANIFEST).is_file()


@dataclass
class Part:
    """One part file as the manifest lists it."""

    path: str  # relative to the store
    site: str
    split: str
    rows: int
    label_min: int | None = None  # None: the part has no labels
    label_max: int | None = None
    mask_max: int | None = None  # None: the part has no masks
    convert: int = 0  # index into the manifest's `converts`

    @property
    def has_labels(self) -> bool:
        return self.label_max is not None

    @property
    def has_masks(self) -> bool:
        return self.mask_max is not None


def schema_problem(found: pa.Schema) -> str | None:
    """What differs from the store schema (None when it matches)."""
    want = {f.name: f.type for f in SCHEMA}
    have = {f.name: f.type for f in found}
    missing = [n for n in want if n not in have]
    wrong = [f"{n} is {have[n]} (expected {want[n]})" for n in want if n in have and have[n] != want[n]]
    extra = [n for n in have if n not in want]
    problems = (([f"missing columns {missing}"] if missing else []) + wrong
                + ([f"unexpected columns {extra}"] if extra else []))
    return "; ".join(problems) or None


class Store:
    """A store opened for reading: the manifest, its parts, and row-group access to them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / MANIFEST
        if self.path.is_file():
            raise DataError(f"{str(self.path)!r} is a file, not a store (a store is a directory with {MANIFEST}); "
                            f"make one from it with `gradprom data convert {self.path} STORE`.")
        if not self.path.is_dir():
            raise DataError(f"Store {str(self.path)!r} does not exist; create one with `gradprom data convert`.")
        if not mf.is_file():
            raise DataError(f"{str(self.path)!r} is not a complete GradProm store (no {MANIFEST}); a conversion may "
                            f"have been interrupted: convert again into a new directory.")
        try:
            m = json.loads(mf.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"Store manifest {str(mf)!r} is not valid JSON ({e}); the store is damaged.") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise DataError(f"{str(mf)!r} is not a GradProm store manifest (expected format {FORMAT!r}).")
        version = m.get("version", 0)
        if not _is_int(version) or version < 1:
            raise DataError(f"Store manifest {str(mf)!r}: `version` is {str(version)[:40]!r}; expected a whole number "
                            f"(this GradProm writes {FORMAT_VERSION}); the store is damaged.")
        if version > FORMAT_VERSION:
            raise DataError(f"Store {str(self.path)!r} has format version {version}; this GradProm reads "
                            f"up to {FORMAT_VERSION}: upgrade GradProm.")
        shape = m.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(v) and v > 0 for v in shape)):
            raise DataError(f"Store manifest {str(mf)!r}: `shape` is {str(shape)[:60]}; expected [C, H, W], three "
                            f"positive whole numbers; the store is damaged.")
        try:
            self.parts = [Part(**p) for p in m["parts"]]
            self.shape: tuple[int, int, int] = tuple(shape)  # type: ignore[assignment]
        except (KeyError, TypeError) as e:
            raise DataError(f"Store manifest {str(mf)!r} lacks or mangles {str(e)[:200]}; the store is "
                            f"damaged.") from None
        for p in self.parts:
            if not (isinstance(p.path, str) and _is_int(p.rows) and all(
                    v is None or _is_int(v) for v in (p.label_min, p.label_max, p.mask_max))):
                raise DataError(f"Store manifest {str(mf)!r}: part {str(p.path)[:100]!r} has non-numeric rows or "
                                f"label/mask ranges; the store is damaged.")
        self.manifest = m

    # ---- selection ------------------------------------------------------------------------------------
    def sites(self) -> list[str]:
        """Site names, in the order they were added."""
        return list(dict.fromkeys(p.site for p in self.parts))

    def select(self, split: str | None = None, sites: list[str] | None = None) -> list[Part]:
        """Parts of one split (all when None) from the given sites (all when None)."""
        if sites is not None:
            unknown = [s for s in sites if s not in self.sites()]
            if unknown:
                raise DataError(f"Store {str(self.path)!r} has no site {unknown[0]!r}; its sites are "
                                f"{self.sites()} (config field `data.sites`).")
        return [p for p in self.parts if (split is None or p.split == split) and (sites is None or p.site in sites)]

    def rows(self, split: str | None = None, sites: list[str] | None = None) -> int:
        """Number of images selected."""
        return sum(p.rows for p in self.select(split, sites))

    def decoded_bytes(self, split: str | None = None, sites: list[str] | None = None) -> int:
        """Bytes the selected images take as float32 in memory."""
        c, h, w = self.shape
        return self.rows(split, sites) * c * h * w * 4

    # ---- reading --------------------------------------------------------------------------------------
    def open_part(self, part: Part) -> pq.ParquetFile:
        """The part's Parquet file, checked to exist and to have the store schema."""
        f = self.path / part.path
        if not f.is_file():
            raise DataError(f"Store {str(self.path)!r}: partition file {part.path!r} (site {part.site!r}, split "
                            f"{part.split!r}) is missing; the store is damaged: re-convert that site into a new store.")
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # truncated or foreign file
            raise DataError(f"Store {str(self.path)!r}: partition file {part.path!r} is not readable Parquet "
                            f"({type(e).__name__}: {e}); the store is damaged.") from None
        problem = schema_problem(pf.schema_arrow)
        if problem:
            raise DataError(f"Store {str(self.path)!r}: partition file {part.path!r} has the wrong schema ({problem}); "
                            f"expected the GradProm store schema.")
        return pf

    def row_groups(self, parts: list[Part]) -> list[tuple[Part, int, int]]:
        """(part, row group index, rows) for every row group of the parts, in manifest order."""
        out = []
        for part in parts:
            md = self.open_part(part).metadata
            n = sum(md.row_group(i).num_rows for i in range(md.num_row_groups))
            if n != part.rows:
                raise DataError(f"Store {str(self.path)!r}: partition file {part.path!r} holds {n} rows, the manifest "
                                f"says {part.rows}; the store is damaged.")
            out += [(part, i, md.row_group(i).num_rows) for i in range(md.num_row_groups)]
        return out

    def read_row_group(self, part: Part, index: int, columns: list[str] | None = None) -> pa.Table:
        """One row group of a part."""
        try:
            return self.open_part(part).read_row_group(index, columns=columns)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"Store {str(self.path)!r}: row group {index} of {part.path!r} could not be read "
                            f"({type(e).__name__}: {e}); the store is damaged.") from None

    def iter_tables(self, parts: list[Part], columns: list[str] | None = None) -> Iterator[tuple[Part, pa.Table]]:
        """Every row group of the parts, one at a time (memory stays at one row group)."""
        for part, i, _ in self.row_groups(parts):
            yield part, self.read_row_group(part, i, columns)

    def part_paths(self, split: str | None = None, sites: list[str] | None = None) -> list[str]:
        """Absolute paths of the selected part files (what Ray Data's `read_parquet` should be given)."""
        return [str(self.path / p.path) for p in self.select(split, sites)]

    def arrow_dataset(self, split: str | None = None, sites: list[str] | None = None) -> pads.Dataset:
        """A pyarrow dataset of the selected parts with `site` and `split` columns (hive partitioning)."""
        part = pads.partitioning(pa.schema([("site", pa.string()), ("split", pa.string())]), flavor="hive")
        return pads.dataset(self.part_paths(split, sites), format="parquet", partitioning=part,
                            partition_base_dir=str(self.path))

    def num_classes(self, sites: list[str] | None = None) -> int:
        """1 + the largest label of the selected parts (0 when none has labels)."""
        maxes = [p.label_max for p in self.select(None, sites) if p.label_max is not None]
        return max(maxes) + 1 if maxes else 0

    def seg_classes(self, sites: list[str] | None = None) -> int:
        """Segmentation classes (with background) of the selected parts, at least 2 (0 when no masks)."""
        maxes = [p.mask_max for p in self.select(None, sites) if p.mask_max is not None]
        return max(max(maxes) + 1, 2) if maxes else 0


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ---- decoding -------------------------------------------------------------------------------------------
def _binary_values(col: pa.ChunkedArray | pa.Array, row_bytes: int, where: str) -> np.ndarray:
    """The bytes of a binary column whose rows all hold `row_bytes` bytes, as one (n, row_bytes) uint8 array."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if arr.null_count:
        raise DataError(f"{where}: {arr.null_count} rows have no bytes; expected {row_bytes} bytes per row.")
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset:arr.offset + n + 1]
    if n and not np.all(np.diff(offsets) == row_bytes):
        bad = int(np.argmax(np.diff(offsets) != row_bytes))
        raise DataError(f"{where}: row {bad} holds {int(offsets[bad + 1] - offsets[bad])} bytes; expected {row_bytes} "
                        f"(its shape and dtype columns disagree with its bytes).")
    data = np.frombuffer(arr.buffers()[2], np.uint8) if n else np.zeros(0, np.uint8)
    return data[offsets[0]:offsets[0] + n * row_bytes].reshape(n, row_bytes)


def decode_images(table: pa.Table, shape: tuple[int, int, int], where: str,
                  out: np.ndarray | None = None) -> np.ndarray:
    """Rows -> (n, C, H, W) float32 in [0, 1] (written into `out` when given)."""
    c, h, w = shape
    n = table.num_rows
    out = np.empty((n, c, h, w), np.float32) if out is None else out
    if not n:
        return out
    for col, want in (("channels", c), ("height", h), ("width", w)):
        vals = table.column(col).to_numpy(zero_copy_only=False)
        if np.any(vals != want):
            raise DataError(f"{where}: column `{col}` holds {int(vals[vals != want][0])}, the store's shape is "
                            f"(C, H, W) = {shape}.")
    dtypes = table.column("dtype").to_numpy(zero_copy_only=False)
    for dt in np.unique(dtypes):
        if dt not in SCALE:
            raise DataError(f"{where}: dtype {cut(dt)}; expected one of {list(SCALE)}.")
        rows = np.flatnonzero(dtypes == dt)
        col = table.column("image") if len(rows) == n else table.column("image").take(pa.array(rows))
        raw = _binary_values(col, c * h * w * np.dtype(dt).itemsize, where)
        pix = raw.view(np.dtype(dt)).reshape(len(rows), c, h, w)
        if dt == "float32" and not np.isfinite(pix).all():  # like the .npz path: refuse, never train on NaN
            bad = int(np.flatnonzero(~np.isfinite(pix).reshape(len(rows), -1).all(1))[0])
            raise DataError(f"{where}: image {int(rows[bad])} of this row group holds NaN/Inf pixels; expected finite "
                            f"pixels in [0, 1] (`gradprom data check` lists every such row): clean or drop those "
                            f"images and convert again.")
        if len(rows) == n:  # one dtype (the usual case): decode straight into `out`, no temporary
            np.divide(pix, np.float32(SCALE[dt]), out=out, dtype=np.float32, casting="unsafe")
        else:
            out[rows] = np.divide(pix, np.float32(SCALE[dt]), dtype=np.float32)
    return out


def decode_masks(table: pa.Table, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """Rows -> (n, H, W) int64 class ids."""
    _, h, w = shape
    return _binary_values(table.column("mask"), h * w, where).reshape(-1, h, w).astype(np.int64)


def manifest_text(manifest: dict[str, Any]) -> str:
    """The manifest as stable, readable JSON."""
    return json.dumps(manifest, indent=1, default=lambda o: asdict(o) if isinstance(o, Part) else str(o)) + "\n"

"""Writing into a store atomically: parts under hidden temp names, renamed when closed, the manifest last.

A conversion either publishes all its parts (by rewriting `_store.json` atomically with them listed) or none:
on any error the parts it wrote are deleted, and a store directory it created is removed entirely. Readers
only read parts the manifest lists, so a conversion in progress (or killed) is never seen. Conversions into
one store are serialized by a lock file, so two appends cannot lose each other's parts.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gradprom.platform.atomic import atomic_path
from gradprom.platform.data.readers.base import SPLITS, Sample
from gradprom.platform.errors import ConfigError, DataError, cut
from gradprom.platform.store.format import (
    COMMON_METADATA,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SCHEMA,
    Part,
    Store,
    content_hash,
    manifest_text,
)

log = logging.getLogger(__name__)
SITE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ROW_GROUP_BYTES = 4 << 20  # raw bytes per row group: streaming holds about one row group per open part
PART_BYTES = 256 << 20  # raw bytes per part file before a new one is started


def check_site(site: str) -> str:
    """A site name that is safe as a directory name (site=<name>)."""
    if not SITE_RE.match(site):
        raise ConfigError(f"--site {cut(site)}: expected letters, digits, '_', '-' or '.', starting with a letter or "
                          f"digit, at most 64 characters (it names the directory site=<name>).")
    return site


def make_readable(path: Path) -> None:
    """Temp files are created 0600; a store is data to share, so give it the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def existing_hashes(store: Store) -> dict[str, tuple[str, str]]:
    """Content hash -> (site, source) of every image a store holds (reads only those two columns)."""
    out: dict[str, tuple[str, str]] = {}
    for part, table in store.iter_tables(store.parts, ["hash", "source"]):
        for h, src in zip(table.column("hash").to_pylist(), table.column("source").to_pylist(), strict=True):
            out.setdefault(h, (part.site, src))
    return out


class _PartWriter:
    """One open part file of one (site, split), written under a hidden temp name."""

    def __init__(self, store: Path, site: str, split: str, name: str):
        self.rel = f"site={site}/split={split}/{name}"
        self.final = store / self.rel
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.parent / f".{name}.tmp"
        self.writer = pq.ParquetWriter(self.tmp, SCHEMA, compression="zstd")
        self.part = Part(path=self.rel, site=site, split=split, rows=0)
        self.rows: list[dict[str, Any]] = []
        self.bytes = self.buffered = 0

    def add(self, row: dict[str, Any], label: int | None, mask_max: int | None) -> None:
        self.rows.append(row)
        self.buffered += len(row["image"])
        p = self.part
        p.rows += 1
        if label is not None:
            p.label_min = label if p.label_min is None else min(p.label_min, label)
            p.label_max = label if p.label_max is None else max(p.label_max, label)
        if mask_max is not None:
            p.mask_max = mask_max if p.mask_max is None else max(p.mask_max, mask_max)
        if self.buffered >= ROW_GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=SCHEMA), row_group_size=len(self.rows))
            self.bytes += self.buffered
            self.rows, self.buffered = [], 0

    def close(self) -> None:
        """Finish the file and give it its final name (still unlisted until the manifest is written)."""
        self.flush()
        self.writer.close()
        self.tmp.rename(self.final)

    def discard(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - best effort while unwinding another error
            pass
        self.tmp.unlink(missing_ok=True)
        self.final.unlink(missing_ok=True)


class StoreWriter:
    """Adds samples (of one site or several) to a store, new or existing; publishes on `commit`, cleans up on
    `abort`.

    Use as a context manager: leaving the block normally commits, an exception aborts.
    """

    def __init__(self, path: str | Path, site: str, provenance: dict[str, Any], allow_duplicates: bool = False):
        self.path = Path(path)
        self.site = check_site(site)
        self.provenance = provenance
        self.created = False
        self.manifest: dict[str, Any] | None = None
        self.open: dict[tuple[str, str], _PartWriter] = {}
        self.done: list[_PartWriter] = []
        self.shape: tuple[int, int, int] | None = None
        self.id = uuid.uuid4().hex[:8]
        self._lock = None
        self.existing_sites: list[str] = []
        self.allow_duplicates = allow_duplicates
        self.existing_hashes: dict[str, tuple[str, str]] = {}  # content hash -> (site, source) already stored

    # ---- life cycle -----------------------------------------------------------------------------------
    def __enter__(self) -> StoreWriter:
        if self.path.exists() and not self.path.is_dir():
            raise DataError(f"Output {str(self.path)!r} is a file; expected a store directory (new or existing).")
        self._take_lock()  # before looking at the directory: another conversion may be creating it right now
        others = [p for p in self.path.iterdir() if p.name != ".lock"]
        if not (self.path / MANIFEST).is_file() and others:
            self._release_lock()
            raise DataError(f"Output {str(self.path)!r} is a non-empty directory but not a GradProm store (no "
                            f"{MANIFEST}), and no conversion is writing into it now (its lock is free): it holds "
                            f"other files or the remains of an interrupted conversion; convert into a new "
                            f"directory.")
        self.created = not others
        if (self.path / MANIFEST).is_file():
            store = Store(self.path)
            self.manifest = store.manifest
            self.shape = store.shape
            self.existing_sites = store.sites()
            if not self.allow_duplicates:
                self.existing_hashes = existing_hashes(store)
        return self

    def _take_lock(self) -> None:
        """flock `.lock` in the store directory, retrying if the directory was removed (a failed conversion
        that created it deletes it) between opening the lock file and getting the lock."""
        while True:
            self.path.mkdir(parents=True, exist_ok=True)
            lock = open(self.path / ".lock", "a")
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path / ".lock").st_ino == os.fstat(lock.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock = lock
                return
            lock.close()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __exit__(self, exc_type, exc, tb) -> None:
        published = False
        try:
            if exc_type is None:
                self.commit()
                published = True
        finally:
            if not published:  # an error in the block or in commit itself: leave no trace
                self.abort()
            if not published and self.created:  # still under the lock: a waiting conversion then starts afresh
                shutil.rmtree(self.path, ignore_errors=True)
            self._release_lock()

    # ---- rows -----------------------------------------------------------------------------------------
    def add(self, s: Sample, split: str, site: str | None = None) -> None:
        """Append one sample to the (site, split) partition (site defaults to the writer's)."""
        site = site or self.site
        if split not in SPLITS:
            raise DataError(f"{s.source}: split {cut(split)}; expected one of {', '.join(SPLITS)}.")
        shape = tuple(int(v) for v in s.image.shape)
        if self.shape is None:
            self.shape = shape  # type: ignore[assignment]
        elif shape != self.shape:
            raise DataError(f"{s.source}: image of shape (C, H, W) = {shape}, but the store {str(self.path)!r} holds "
                            f"{self.shape}; a store holds one shape: pass --size {self.shape[1]} {self.shape[2]} "
                            f"(with --resize or --crop)"
                            f"{' and convert RGB separately' if shape[0] != self.shape[0] else ''}.")
        key = (site, split)
        w = self.open.get(key)
        if w is None or w.bytes >= PART_BYTES:
            if w is None:
                if not SITE_RE.match(site):
                    raise DataError(f"{s.source}: site {cut(site)}; expected letters, digits, '_', '-' or '.' "
                                    f"(it names the directory site=<name>).")
                if site in self.existing_sites:
                    log.warning("store %s already has site %r: adding more images to it", self.path, site)
            else:
                w.close()
                self.done.append(w)
            n = sum(1 for d in self.done if (d.part.site, d.part.split) == key)
            w = self.open[key] = _PartWriter(self.path, site, split, f"part-{self.id}-{n:04d}.parquet")
        digest = content_hash(s.image)
        if digest in self.existing_hashes:
            where = self.existing_hashes[digest]
            raise DataError(f"{s.source}: this image is already in the store {str(self.path)!r} (site {where[0]!r}, "
                            f"{where[1][:200]}); converting the same content again would count it twice. Nothing "
                            f"was added; pass --allow-duplicates if the copies are meant.")
        mask_max = None if s.mask is None else int(s.mask.max()) if s.mask.size else 0
        row = {"image": s.image.tobytes(), "dtype": s.image.dtype.name, "channels": shape[0], "height": shape[1],
               "width": shape[2], "label": s.label,
               "mask": None if s.mask is None else s.mask.astype(np.uint8).tobytes(),
               "source": s.source, "hash": digest}
        w.add(row, s.label, mask_max)

    def rows(self) -> dict[str, int]:
        """Rows written so far per "site/split"."""
        out: dict[str, int] = {}
        for w in [*self.done, *self.open.values()]:
            k = f"{w.part.site}/{w.part.split}"
            out[k] = out.get(k, 0) + w.part.rows
        return out

    # ---- publish or undo ------------------------------------------------------------------------------
    def commit(self) -> None:
        """Close the parts and publish them by rewriting the manifest (atomically, last)."""
        for w in self.open.values():
            w.close()
            self.done.append(w)
        self.open = {}
        if not self.done:
            raise DataError(f"Nothing to add to {str(self.path)!r}: the source held no images.")
        m = self.manifest or {"format": FORMAT, "version": FORMAT_VERSION, "shape": list(self.shape or ()),
                              "schema": {f.name: str(f.type) for f in SCHEMA}, "parts": [], "converts": []}
        convert = len(m["converts"])
        m["converts"].append({**self.provenance, "sites": sorted({w.part.site for w in self.done}),
                              "rows": self.rows(), "id": self.id,
                              "time": datetime.now(UTC).isoformat(timespec="seconds")})
        for w in self.done:
            w.part.convert = convert
            m["parts"].append(asdict(w.part))
        schema = SCHEMA.with_metadata({"gradprom.store": json.dumps({k: m[k] for k in ("format", "version", "shape")})})
        with atomic_path(self.path / COMMON_METADATA) as tmp:
            pq.write_metadata(schema, tmp)
            make_readable(tmp)
        with atomic_path(self.path / MANIFEST) as tmp:  # the publishing step: parts listed here exist
            tmp.write_text(manifest_text(m))
            make_readable(tmp)
        log.info("published %d part files into %s", len(self.done), self.path)

    def abort(self) -> None:
        """Delete every part this writer made (the manifest never listed them)."""
        for w in [*self.open.values(), *self.done]:
            w.discard()
        for d in {w.final.parent for w in [*self.open.values(), *self.done]}:
            for p in (d, d.parent):  # partition folders this conversion created and left empty
                try:
                    p.rmdir()
                except OSError:
                    pass
        self.open, self.done = {}, []

"""`gradprom data check`: validate a store row by row, one row group at a time.

Errors (exit 1): a missing or damaged manifest; a partition file that is missing, unreadable, has the wrong
schema or row count, or sits in the wrong site/split folder; a row whose shape or dtype columns disagree with
the store or its bytes, whose float pixels are NaN/Inf or outside [0, 1], whose hash does not match its pixels,
whose label is missing, negative or outside 0..K-1 (K declared by --num-classes at conversion, else the
manifest's range), or whose mask is malformed; the same image in train and in val/test (leakage).
Duplicate images within a split are errors too, unless the conversion that added them passed --allow-duplicates.
Warnings: duplicates allowed that way, part files no manifest lists (an interrupted conversion), val/test
classes that train lacks.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from gradprom.platform.data.validate import MAX_CLASSES, too_many_classes
from gradprom.platform.errors import DataError, cut
from gradprom.platform.store.format import MANIFEST, SCALE, Store, content_hash

MAX_PER_KIND = 5  # findings of one kind shown before "... and N more"


@dataclass
class Finding:
    """One problem: `level` is "error" or "warning"; `kind` groups findings for the report."""

    level: str
    kind: str
    message: str


@dataclass
class CheckReport:
    """What `check_store` found, and what the store holds."""

    store: Path
    findings: list[Finding] = field(default_factory=list)
    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    classes: dict[tuple[str, str], Counter] = field(default_factory=lambda: defaultdict(Counter))
    shape: tuple[int, ...] = ()
    counts: Counter = field(default_factory=Counter)  # findings per kind, including those not kept

    def add(self, level: str, kind: str, message: str) -> None:
        self.counts[(level, kind)] += 1
        if self.counts[(level, kind)] <= MAX_PER_KIND:
            self.findings.append(Finding(level, kind, message))

    @property
    def errors(self) -> int:
        return sum(n for (lvl, _), n in self.counts.items() if lvl == "error")

    @property
    def warnings(self) -> int:
        return sum(n for (lvl, _), n in self.counts.items() if lvl == "warning")


def check_store(path: str | Path) -> CheckReport:
    """Validate the store at `path`; never raises for a damaged store (the report says what is wrong)."""
    rep = CheckReport(Path(path))
    try:
        store = Store(path)
    except DataError as e:
        rep.add("error", "manifest", str(e))
        return rep
    rep.shape = store.shape
    c, h, w = store.shape
    if c not in (1, 3) or min(h, w) < 8:
        rep.add("error", "shape", f"manifest shape (C, H, W) = {store.shape}; expected C = 1 or 3 and sides >= 8.")
    declared = [cv.get("options", {}).get("num_classes") for cv in store.manifest.get("converts", [])]
    declared = [k for k in declared if k]
    k_max = min(declared) if declared else None
    listed = {p.path for p in store.parts}
    busy = conversion_running(store.path)
    for f in sorted(store.path.glob("site=*/split=*/*")):
        rel = f.relative_to(store.path).as_posix()
        if rel not in listed and busy:  # never advise deleting what a live conversion is writing
            rep.add("warning", "orphan", f"{rel}: not listed in {MANIFEST} yet: a conversion into this store is "
                                         f"running now and publishes it when it finishes; leave it alone.")
        elif rel not in listed:
            rep.add("warning", "orphan", f"{rel}: not listed in {MANIFEST}, so not part of the store (left by an "
                                         f"interrupted conversion: none is running now); it is ignored and can be "
                                         f"deleted.")
    seen: dict[str, tuple[str, str, str]] = {}  # hash -> (split, site, source) of its first row
    for part in store.parts:
        if not part.path.startswith(f"site={part.site}/split={part.split}/"):
            rep.add("error", "partition", f"{part.path}: listed as site {part.site!r}, split {part.split!r}, "
                                          f"but stored outside site={part.site}/split={part.split}/.")
        try:
            groups = store.row_groups([part])
        except DataError as e:
            rep.add("error", "partition", str(e))
            continue
        for _, rg, _ in groups:
            try:
                table = store.read_row_group(part, rg)
            except DataError as e:
                rep.add("error", "partition", str(e))
                continue
            _check_rows(rep, store, part, rg, table, k_max, seen)
    _check_classes(rep)
    return rep


def _check_rows(rep: CheckReport, store: Store, part, rg: int, table, k_max: int | None,
                seen: dict[str, tuple[str, str, str]]) -> None:
    c, h, w = store.shape
    cols = {n: table.column(n).to_pylist() for n in ("dtype", "channels", "height", "width", "label", "source", "hash")}
    lengths = pc.binary_length(table.column("image")).to_pylist()
    mask_lengths = pc.binary_length(table.column("mask")).to_pylist()
    images = table.column("image")
    key = (part.site, part.split)
    for i in range(table.num_rows):
        src = cols["source"][i]
        where = f"{part.path} row group {rg} row {i} ({src})"
        rep.rows[key] = rep.rows.get(key, 0) + 1
        dt = cols["dtype"][i]
        if dt not in SCALE:
            rep.add("error", "dtype", f"{where}: dtype {cut(dt)}; expected one of {list(SCALE)}.")
            continue
        shape = (cols["channels"][i], cols["height"][i], cols["width"][i])
        if shape != (c, h, w):
            rep.add("error", "shape", f"{where}: shape (C, H, W) = {shape}; the store holds {(c, h, w)}.")
            continue
        want = c * h * w * np.dtype(dt).itemsize
        if lengths[i] != want:
            rep.add("error", "shape", f"{where}: {lengths[i]} image bytes; {dt} {shape} needs {want}.")
            continue
        pix = np.frombuffer(images[i].as_py(), dtype=dt).reshape(c, h, w)
        if dt == "float32":
            if not np.isfinite(pix).all():
                rep.add("error", "nan", f"{where}: {int((~np.isfinite(pix)).sum())} NaN/Inf pixels; expected finite.")
            elif pix.size and (pix.min() < 0 or pix.max() > 1):
                rep.add("error", "range", f"{where}: float pixels in [{pix.min():.4g}, {pix.max():.4g}]; "
                                          f"expected [0, 1].")
        digest = content_hash(pix)
        if cols["hash"][i] != digest:
            rep.add("error", "hash", f"{where}: stored hash {cut(cols['hash'][i])} does not match its pixels; the row "
                                     f"is corrupted.")
        label = cols["label"][i]
        if part.has_labels:
            if label is None:
                rep.add("error", "label", f"{where}: no label, but its partition has labels.")
            elif label < 0 or (k_max is not None and label >= k_max) or label > part.label_max:
                top = k_max - 1 if k_max is not None else part.label_max
                rep.add("error", "label", f"{where}: label {label} out of range; expected 0..{top}.")
            elif label >= MAX_CLASSES:
                rep.add("error", "label", str(too_many_classes(label, where)))
            else:
                rep.classes[key][label] += 1
        if part.has_masks:
            ml = mask_lengths[i]
            if ml != h * w:
                rep.add("error", "mask", f"{where}: mask of {ml} bytes; expected {h * w} (H x W uint8).")
            else:
                mx = int(np.frombuffer(table.column("mask")[i].as_py(), np.uint8).max())
                if mx > part.mask_max:
                    rep.add("error", "mask", f"{where}: mask value {mx} above the partition's {part.mask_max}.")
        first = seen.get(digest)
        if first is None:
            seen[digest] = (part.split, part.site, src)
        elif first[0] != part.split and "train" in (first[0], part.split):
            rep.add("error", "leakage", f"{where}: the same image is in {part.split} and in {first[0]} ({first[2]}, "
                                        f"site {first[1]}): train/test leakage.")
        else:  # an error unless the conversion that added it asked for copies (--allow-duplicates)
            allowed = _allows_duplicates(store, part.convert)
            rep.add("warning" if allowed else "error", "duplicate",
                    f"{where}: duplicate of {first[2]} (site {first[1]}, split {first[0]})"
                    + ("; added with --allow-duplicates." if allowed else "; the same image counted twice (convert "
                       "without the repeated source, or with --allow-duplicates if the copies are meant)."))


def _allows_duplicates(store: Store, convert: int) -> bool:
    converts = store.manifest.get("converts", [])
    opts = converts[convert].get("options", {}) if 0 <= convert < len(converts) else {}
    return bool(isinstance(opts, dict) and opts.get("allow_duplicates"))


def _check_classes(rep: CheckReport) -> None:
    train = {k for (site, split), cnt in rep.classes.items() if split == "train" for k in cnt}
    for (site, split), cnt in sorted(rep.classes.items()):
        extra = sorted(set(cnt) - train)
        if split != "train" and train and extra:
            rep.add("warning", "classes", f"site {site}, split {split}: classes {extra} never occur in train.")


def conversion_running(path: Path) -> bool:
    """A `data convert` holds the store's lock right now (the lock dies with its process, so a killed conversion
    does not count)."""
    try:
        with open(path / ".lock") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        pass
    return False


def fingerprint(path: str | Path) -> str:
    """A digest of every file in a store (names, sizes, bytes): equal before and after means untouched."""
    h = hashlib.blake2b(digest_size=16)
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock"):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()

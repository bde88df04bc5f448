"""`gradprom data convert`: read a source, fit every image to one shape, assign splits, write into a store.

Splits (`split_by`):
  auto                   the source's own split (npz keys, a CSV `split` column) where it has one, else random
  source                 the source's own split; a sample without one is an error
  random[:T,V,S]         seeded by (seed, group): fractions T/V/S (default 0.8,0.1,0.1); the slices of one volume
                         or multi-frame file share a group, so they never straddle train and test
  train | val | test     everything into that split (e.g. a held-out hospital as `test`)
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import ConfigError, DataError
from .readers import Fitter, ReadOptions, Sample, open_reader
from .readers.base import SPLITS
from .readers.fit import FIT_MODES
from .store_write import StoreWriter, check_site

log = logging.getLogger(__name__)


@dataclass
class SplitRule:
    """How samples are assigned to train/val/test (see the module docstring)."""

    kind: str  # auto | source | random | fixed
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    fixed: str = ""
    seed: int = 0

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> "SplitRule":
        """Parse a --split-by value."""
        t = text.strip()
        if t in ("auto", "source"):
            return cls(t, seed=seed)
        if t in SPLITS:
            return cls("fixed", fixed=t, seed=seed)
        if t == "random" or t.startswith("random:"):
            if t == "random":
                return cls("random", seed=seed)
            try:
                fr = tuple(float(v) for v in t.split(":", 1)[1].split(","))
            except ValueError:
                fr = ()
            if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
                raise ConfigError(f"--split-by {text!r}: random needs three fractions train,val,test >= 0 summing to 1, "
                                  f"e.g. random:0.8,0.1,0.1.")
            return cls("random", fractions=fr, seed=seed)  # type: ignore[arg-type]
        raise ConfigError(f"--split-by {text!r}; expected auto, source, random[:T,V,S], train, val or test.")

    def __call__(self, s: Sample) -> str:
        if self.kind == "fixed":
            return self.fixed
        if s.split and self.kind in ("auto", "source"):
            return s.split
        if self.kind == "source":
            raise DataError(f"{s.source}: no split in the source (no npz key or CSV `split` cell); use "
                            f"--split-by random or a fixed split.")
        digest = hashlib.blake2b(f"{self.seed}|{s.group or s.source}".encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2.0 ** 64
        t, v, _ = self.fractions
        return "train" if u < t else "val" if u < t + v else "test"

    def __str__(self) -> str:
        if self.kind == "random":
            return "random:" + ",".join(f"{f:g}" for f in self.fractions)
        return self.fixed or self.kind


@dataclass
class ConvertSummary:
    """What a conversion added: rows and classes per (site, split), and the image shape."""

    store: Path
    shape: tuple[int, int, int]
    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    classes: dict[tuple[str, str], Counter] = field(default_factory=lambda: defaultdict(Counter))
    masks: dict[tuple[str, str], int] = field(default_factory=dict)


def convert(src: str | Path, out: str | Path, *, fmt: str = "auto", site: str | None = None,
            split_by: str = "auto", seed: int = 0, size: tuple[int, int] | None = None, fit: str | None = None,
            options: ReadOptions | None = None, num_classes: int | None = None,
            progress: bool = True) -> ConvertSummary:
    """Convert `src` into the store `out` (created, or appended to); nothing is published unless all succeeds."""
    if fit is not None and fit not in FIT_MODES:
        raise ConfigError(f"fit mode {fit!r}; expected one of {FIT_MODES}.")
    if fit is not None and size is None:
        raise ConfigError(f"--{fit} needs --size H W (the size to {fit} every image to).")
    if size is not None and min(size) < 8:
        raise ConfigError(f"--size {size[0]} {size[1]}: expected both sides >= 8 pixels.")
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"--num-classes {num_classes}: expected at least 1.")
    rule = SplitRule.parse(split_by, seed)
    options = options or ReadOptions()
    src = Path(src)
    reader = open_reader(src, fmt, options)
    default_site = check_site(site) if site else None
    provenance: dict[str, Any] = {
        "source": str(src.resolve()), "format": reader.name, "reader": f"gradprom.{reader.name}",
        "reader_version": reader.version, "gradprom": _version(),
        "options": {"split_by": str(rule), "seed": seed, "size": list(size) if size else None,
                    "fit": (fit or "resize") if size else None, "num_classes": num_classes, "site": site,
                    "labels": options.labels, "window": list(options.window) if options.window else None,
                    "axis": options.axis},
        "read": reader.provenance(),
    }
    fitter = Fitter(size=tuple(size) if size else None, mode=fit or "resize")
    summary = ConvertSummary(Path(out), (0, 0, 0))
    with StoreWriter(out, default_site or _site_name(src), provenance) as writer:
        if writer.shape is not None:
            fitter.shape, fitter.first = writer.shape, f"the store {str(out)!r}"
        bar = tqdm(reader, total=reader.total, desc=f"converting {src.name}", unit="img", disable=None if progress else True,
                   dynamic_ncols=True)
        for s in bar:
            s = fitter(s)
            if num_classes is not None and s.label is not None and s.label >= num_classes:
                raise DataError(f"{s.source}: label {s.label} is out of range; --num-classes {num_classes} allows "
                                f"0..{num_classes - 1}.")
            split = rule(s)
            key = (default_site or s.site or writer.site, split)
            writer.add(s, split, key[0])
            summary.rows[key] = summary.rows.get(key, 0) + 1
            if s.label is not None:
                summary.classes[key][s.label] += 1
            if s.mask is not None:
                summary.masks[key] = summary.masks.get(key, 0) + 1
        bar.close()
        summary.shape = writer.shape  # type: ignore[assignment]
    return summary


def _site_name(src: Path) -> str:
    """Default site: the source's name, made directory-safe."""
    stem = src.stem if src.is_file() else src.name
    clean = "".join(c if c.isalnum() or c in "_.-" else "_" for c in stem).strip("._-") or "site"
    return clean[:64]


def _version() -> str:
    try:
        return metadata.version("gradprom")
    except metadata.PackageNotFoundError:
        return "unknown"

"""`gradprom data convert`: read a source, fit every image to one shape, assign splits (`split_by`, see
data/readers/split.py), write into a store."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gradprom.platform.data.readers import Fitter, ReadOptions, open_reader
from gradprom.platform.data.readers.fit import FIT_MODES
from gradprom.platform.data.readers.split import SplitRule
from gradprom.platform.errors import ConfigError, DataError
from gradprom.platform.store.write import StoreWriter, check_site

log = logging.getLogger(__name__)


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
            progress: bool = True, allow_duplicates: bool = False) -> ConvertSummary:
    """Convert `src` into the store `out` (created, or appended to); nothing is published unless all succeeds.
    An image whose content the store already holds is refused unless `allow_duplicates`."""
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
                    "axis": options.axis, "allow_duplicates": allow_duplicates},
        "read": reader.provenance(),
    }
    fitter = Fitter(size=tuple(size) if size else None, mode=fit or "resize")
    summary = ConvertSummary(Path(out), (0, 0, 0))
    with StoreWriter(out, default_site or _site_name(src), provenance, allow_duplicates) as writer:
        if writer.shape is not None:
            fitter.shape, fitter.first = writer.shape, f"the store {str(out)!r}"
        bar = tqdm(reader, total=reader.total, desc=f"converting {src.name}", unit="img",
                   disable=None if progress else True, dynamic_ncols=True)
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

"""DICOM reader (pydicom): single files, multi-frame files and 3-D series of single-frame files.

Per file: stored values -> rescale (slope, intercept; per frame where the file says so) -> window (the chosen
center/width, else the file's own first window, else the volume's min..max) -> float32 in [0, 1] as
clip((x - (center - width / 2)) / width, 0, 1); MONOCHROME1 is inverted so bright is dense. RGB files are
stored as uint8 without windowing. Single-frame files sharing a SeriesInstanceUID are stacked in slice order
(position along the slice normal, else InstanceNumber) into one volume; volumes and multi-frame files are
sliced along `axis` (0 = frames/slices, 1 = rows, 2 = columns), one Sample per slice. Nothing from the header
(patient name, ID, dates, UIDs) is copied: a Sample carries the pixels, the file's path and the slice number.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale

from gradprom.platform.data.readers.base import ReadOptions, Sample, as_stored, check_label, relative
from gradprom.platform.data.readers.folder import read_labels_csv
from gradprom.platform.errors import DataError

log = logging.getLogger(__name__)
VERSION = "1"
_SKIP_SUFFIXES = (".csv", ".txt", ".json", ".md", ".yaml", ".yml")


def window_to_unit(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """The documented linear window: clip((x - (center - width / 2)) / width, 0, 1) as float32."""
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width}")
    return np.clip((x.astype(np.float64) - (center - width / 2.0)) / width, 0.0, 1.0).astype(np.float32)


def _first(value: Any) -> float:
    """A DICOM number that may be multi-valued: its first value."""
    return float(value[0]) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else float(value)


def _file_window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return _first(ds.WindowCenter), _first(ds.WindowWidth)
    try:  # enhanced multi-frame: the window sits in the shared functional groups
        voi = ds.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
        return _first(voi.WindowCenter), _first(voi.WindowWidth)
    except (AttributeError, IndexError, KeyError):
        return None


def _read(path: Path, header_only: bool) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except InvalidDicomError as e:
        raise DataError(f"DICOM file {str(path)!r} is not a DICOM file ({e}); remove it from the folder "
                        f"or fix it.") from None
    except Exception as e:  # truncated or damaged headers raise many kinds of errors
        raise DataError(f"DICOM file {str(path)!r} could not be read ({type(e).__name__}: {e}); it may be "
                        f"truncated or damaged.") from None


def _pixels(path: Path) -> tuple[np.ndarray, pydicom.Dataset]:
    """Stored values after rescale, (frames, H, W) float64, or (frames, H, W, 3) uint8 for RGB."""
    ds = _read(path, header_only=False)
    if "PixelData" not in ds:
        raise DataError(f"DICOM file {str(path)!r} has no pixel data (a structured report or a header-only file?); "
                        f"expected an image.")
    try:
        arr = ds.pixel_array
    except Exception as e:  # truncated pixel data, or a compressed transfer syntax without its decoder
        raise DataError(f"DICOM file {str(path)!r}: its pixel data could not be decoded ({type(e).__name__}: "
                        f"{str(e)[:200]}); it may be truncated, or compressed with a codec that needs an extra "
                        f"package (pylibjpeg, python-gdcm).") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    rgb = int(getattr(ds, "SamplesPerPixel", 1)) == 3
    if rgb:
        arr = arr.reshape((frames, *arr.shape[-3:])) if arr.ndim >= 3 else arr
        return np.asarray(arr, np.uint8), ds
    arr = arr.reshape((frames, *arr.shape[-2:]))
    return np.asarray(apply_rescale(arr, ds), np.float64), ds


class DicomReader:
    """Samples of a DICOM file or a folder of DICOM files (series are stacked, then sliced along `axis`)."""

    name = "dicom"
    version = VERSION

    def __init__(self, path: str | Path, options: ReadOptions | None = None):
        self.root = Path(path)
        self.opts = options or ReadOptions()
        if self.opts.axis not in (0, 1, 2):
            raise DataError(f"DICOM slicing axis {self.opts.axis}; expected 0 (frames/slices), 1 (rows) "
                            f"or 2 (columns).")
        if self.opts.window is not None and not self.opts.window[1] > 0:
            raise DataError(f"DICOM window width {self.opts.window[1]}; expected a width > 0.")
        if self.root.is_file():
            files, self.base = [self.root], self.root.parent
        elif self.root.is_dir():
            files = sorted(p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() not in _SKIP_SUFFIXES)
            self.base = self.root
        else:
            raise DataError(f"DICOM source {str(self.root)!r} does not exist.")
        if not files:
            raise DataError(f"DICOM folder {str(self.root)!r} holds no files.")
        self.labels = self._labels()
        self.groups = self._group(files)
        self.total = None  # known only after the pixels are read (volumes may be sliced along any axis)

    def _labels(self) -> dict[str, dict[str, str]]:
        if not self.opts.labels:
            return {}
        csv_path = Path(self.opts.labels)
        rows = read_labels_csv(csv_path)
        self.label_base = csv_path.parent
        return {(csv_path.parent / r["file"]).resolve().as_posix(): {**r, "_row": str(i + 2)}
                for i, r in enumerate(rows)}

    def _group(self, files: list[Path]) -> list[list[Path]]:
        """Group single-frame files of one series; multi-frame files stand alone. Headers only."""
        series: dict[str, list[tuple[tuple, Path]]] = defaultdict(list)
        alone: list[list[Path]] = []
        for f in files:
            ds = _read(f, header_only=True)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            uid = getattr(ds, "SeriesInstanceUID", None)
            if frames > 1 or not uid:
                alone.append([f])
                continue
            series[str(uid)].append((self._slice_key(ds, f), f))
        groups = alone + [[f for _, f in sorted(members)] for members in series.values()]
        return sorted(groups, key=lambda g: g[0].as_posix())

    @staticmethod
    def _slice_key(ds: pydicom.Dataset, f: Path) -> tuple:
        try:
            o = np.array([float(v) for v in ds.ImageOrientationPatient])
            pos = np.array([float(v) for v in ds.ImagePositionPatient])
            return (0, float(np.dot(np.cross(o[:3], o[3:]), pos)), f.as_posix())
        except (AttributeError, ValueError, TypeError):
            return (1, int(getattr(ds, "InstanceNumber", 0) or 0), f.as_posix())

    def provenance(self) -> dict[str, Any]:
        """What was read and how (no header values: they may identify the patient)."""
        return {"files": sum(len(g) for g in self.groups), "volumes": len(self.groups), "axis": self.opts.axis,
                "window": list(self.opts.window) if self.opts.window else "file's own, else min-max",
                "labels_csv": self.opts.labels}

    def _volume(self, group: list[Path]) -> tuple[np.ndarray, bool]:
        """The group's pixels in [0, 1] (Z, H, W) float32, or (Z, H, W, 3) uint8 for RGB; True when RGB."""
        parts, shapes, window, mono1 = [], set(), None, False
        for f in group:
            arr, ds = _pixels(f)
            shapes.add(arr.shape[1:])
            if len(shapes) > 1:
                raise DataError(f"DICOM file {str(f)!r} has {arr.shape[1:]} pixels, unlike the rest of its series "
                                f"{sorted(shapes)}; expected one size per series.")
            parts.append(arr)
            window = window or _file_window(ds)
            mono1 = str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1"
        vol = np.concatenate(parts, axis=0)
        if vol.ndim == 4:
            return vol, True
        center, width = self.opts.window or window or (None, None)
        if center is None or not width or width <= 0:
            lo, hi = float(vol.min()), float(vol.max())
            center, width = (lo + hi) / 2.0, max(hi - lo, 1e-12)
            log.info("%s: no window given or in the file; using its min..max [%g, %g]", group[0], lo, hi)
        out = window_to_unit(vol, center, width)
        return (1.0 - out if mono1 else out), False

    def _label_row(self, group: list[Path]) -> dict[str, str] | None:
        for cand in [*group, group[0].parent]:
            row = self.labels.get(cand.resolve().as_posix())
            if row is not None:
                return row
        return None

    def __iter__(self) -> Iterator[Sample]:
        for group in self.groups:
            vol, rgb = self._volume(group)
            row = self._label_row(group)
            if self.labels and row is None:
                raise DataError(f"Labels CSV {self.opts.labels!r} has no row for DICOM {str(group[0])!r} "
                                f"(expected a row whose `file` names this file or its series folder).")
            where = f"{self.opts.labels} row {row['_row']}" if row else str(group[0])
            label = check_label(row["label"], where) if row and row.get("label") else None
            name = relative(group[0], self.base) if len(group) == 1 else relative(group[0].parent, self.base)
            axis = self.opts.axis
            if rgb and axis != 0:
                raise DataError(f"DICOM {str(group[0])!r} is RGB; it can be sliced along axis 0 only.")
            slices = np.moveaxis(vol, axis, 0)
            for k in range(slices.shape[0]):
                img = np.moveaxis(slices[k], -1, 0) if rgb else slices[k][None]
                src = f"{name}#frame={k}" if axis == 0 else f"{name}#axis={axis},slice={k}"
                yield Sample(image=as_stored(np.ascontiguousarray(img), f"DICOM {src}"), source=src, label=label,
                             split=(row or {}).get("split") or None, site=(row or {}).get("site") or None,
                             group=name)

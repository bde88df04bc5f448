"""Inputs of `gradprom enhance`, read into unit-range frames: an image folder (or one image), a `.npz` or DICOM
(stores are read by row groups in store_io.py). Each yields `Item`s (what to enhance and what the writer needs
to write it back) or `Failure`s (one line naming the input); a bad input never stops the others.

Pixels are scaled as in training: uint8 / 255, uint16 / 65535, float as is; DICOM stored values go through the
rescale slope/intercept, then the file's own window (else the file's min..max) to [0, 1], MONOCHROME1 inverted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels import apply_rescale

from gradprom.platform.data.readers.folder import IMAGE_SUFFIXES, read_image_file
from gradprom.platform.errors import DataError
from gradprom.platform.store.format import SCALE, Store, is_store

DICOM_SKIP_SUFFIXES = (".csv", ".txt", ".json", ".md", ".yaml", ".yml", ".png", ".jpg", ".jpeg", ".npz")
KINDS = ("folder", "npz", "dicom", "store")


@dataclass
class Item:
    """One input: frames (N, C, H, W) float32 in [0, 1] to enhance, its name, and what its writer needs."""

    name: str
    frames: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the input file (for its checksum), when it is one file


@dataclass
class Failure:
    """An input that cannot be enhanced, with the one-line reason (naming it)."""

    name: str
    message: str


def to_unit(arr: np.ndarray) -> np.ndarray:
    """Stored pixels -> float32 in [0, 1] the way training scales them."""
    if arr.dtype.name in SCALE:
        return (arr.astype(np.float32) / np.float32(SCALE[arr.dtype.name])).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise DataError(f"pixels of type {arr.dtype}; expected uint8, uint16 or float.")


def detect_kind(src: Path) -> str:
    """folder | npz | dicom | store, from what `src` is."""
    if not src.exists():
        raise DataError(f"--input {str(src)!r} does not exist; expected an image folder, an image, a .npz, DICOM "
                        f"file(s) or a store.")
    if is_store(src):
        return "store"
    if src.is_file():
        if src.suffix.lower() == ".npz":
            return "npz"
        return "folder" if src.suffix.lower() in IMAGE_SUFFIXES else "dicom"
    files = [f for f in src.rglob("*") if f.is_file() and not f.name.startswith(".")]
    if any(f.suffix.lower() in IMAGE_SUFFIXES for f in files):
        return "folder"
    if files:
        return "dicom"
    raise DataError(f"--input {str(src)!r} is an empty folder; expected images, DICOM files or a store.")


def _files(src: Path, keep) -> tuple[list[Path], Path]:
    if src.is_file():
        return [src], src.parent
    return sorted(f for f in src.rglob("*") if f.is_file() and not f.name.startswith(".") and keep(f)), src


# ---------------------------------------------------------------------------------------------------------
def read_folder(src: Path) -> Iterator[Item | Failure]:
    """PNG/JPEG files (8 or 16 bit, grayscale or RGB), each one Item."""
    files, base = _files(src, lambda f: f.suffix.lower() in IMAGE_SUFFIXES)
    for f in files:
        name = f.relative_to(base).as_posix()
        try:
            arr = read_image_file(f, "input")
        except DataError as e:
            yield Failure(name, str(e))
            continue
        yield Item(name, to_unit(arr)[None], {"dtype": arr.dtype.name}, path=f)


def npz_image_keys(keys: list[str]) -> list[str]:
    """The arrays of a .npz that hold images: `images` and `<split>_images`."""
    return [k for k in keys if k == "images" or k.endswith("_images")]


def read_npz(src: Path) -> Iterator[Item | Failure]:
    """Every image of every `*images` array of a .npz ((N, H, W) or (N, H, W, C)), one Item each."""
    try:
        z = np.load(src, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zip, pickle and format errors all mean "not a readable .npz"
        yield Failure(src.name, f"{str(src)!r} is not a readable .npz ({type(e).__name__}: {e}).")
        return
    keys = npz_image_keys(list(arrays))
    if not keys:
        yield Failure(src.name, f"{str(src)!r} has no image array (expected `images` or `<split>_images`; it has "
                                f"{sorted(arrays)}).")
        return
    for key in keys:
        arr = arrays[key]
        if arr.ndim not in (3, 4):
            yield Failure(f"{src.name}#{key}", f"{src.name}: array `{key}` has shape {arr.shape}; expected (N, H, W) "
                                               f"or (N, H, W, C).")
            continue
        for i in range(len(arr)):
            img = arr[i][None] if arr.ndim == 3 else np.moveaxis(arr[i], -1, 0)
            name = f"{src.name}#{key}[{i}]"
            try:
                frames = to_unit(img)[None]
            except DataError as e:
                yield Failure(name, f"{name}: {e} Its array `{key}` is left out of the output .npz.")
                continue
            yield Item(name, frames, {"key": key, "index": i, "count": len(arr), "layout": arr.ndim,
                                      "dtype": arr.dtype.name, "arrays": arrays}, path=src)


# ---------------------------------------------------------------------------------------------------------
def _first(value: Any) -> float:
    return float(value[0]) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else float(value)


def dicom_window(ds: pydicom.Dataset, units: np.ndarray) -> tuple[float, float]:
    """(low, width) of the file's own window, else its min..max."""
    if "WindowCenter" in ds and "WindowWidth" in ds and _first(ds.WindowWidth) > 0:
        c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
        return c - w / 2.0, w
    lo, hi = float(units.min()), float(units.max())
    return lo, max(hi - lo, 1e-6)


def read_dicom(src: Path) -> Iterator[Item | Failure]:
    """Every DICOM file (single- or multi-frame grayscale), one Item each with its frames."""
    files, base = _files(src, lambda f: f.suffix.lower() not in DICOM_SKIP_SUFFIXES)
    for f in files:
        name = f.relative_to(base).as_posix()
        try:
            ds = pydicom.dcmread(f)
        except Exception as e:  # noqa: BLE001 - not DICOM, truncated header: many kinds of errors
            yield Failure(name, f"DICOM file {name!r} could not be read ({type(e).__name__}: {str(e)[:150]}).")
            continue
        if "PixelData" not in ds:
            yield Failure(name, f"DICOM file {name!r} has no pixel data (a structured report or header-only "
                                f"file?); expected an image.")
            continue
        if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
            yield Failure(name, f"DICOM file {name!r} has {ds.SamplesPerPixel} samples per pixel; `gradprom enhance` "
                                f"writes grayscale DICOM only.")
            continue
        try:
            stored = np.asarray(ds.pixel_array)
        except Exception as e:  # noqa: BLE001 - truncated pixel data or a codec that is not installed
            yield Failure(name, f"DICOM file {name!r}: its pixel data could not be decoded ({type(e).__name__}: "
                                f"{str(e)[:150]}).")
            continue
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        stored = stored.reshape((frames, *stored.shape[-2:]))
        units = np.asarray(apply_rescale(stored, ds), np.float64)
        low, width = dicom_window(ds, units)
        unit = np.clip((units - low) / width, 0.0, 1.0).astype(np.float32)
        mono1 = str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1"
        yield Item(name, (1.0 - unit if mono1 else unit)[:, None],
                   {"ds": ds, "units": units, "low": low, "width": width, "mono1": mono1, "stored_dtype": stored.dtype},
                   path=f)


READERS = {"folder": read_folder, "npz": read_npz, "dicom": read_dicom}  # stores: store_io.py


def count_inputs(src: Path, kind: str) -> int | None:
    """How many Items `src` will give (for the progress bar), when cheap to know."""
    if kind == "store":
        return Store(src).rows()
    if kind == "folder":
        return len(_files(src, lambda f: f.suffix.lower() in IMAGE_SUFFIXES)[0])
    if kind == "dicom":
        return len(_files(src, lambda f: f.suffix.lower() not in DICOM_SKIP_SUFFIXES)[0])
    return None

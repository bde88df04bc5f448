"""Readers of real data: MedMNIST `.npz`, image folders with a labels CSV, DICOM files and series.

`open_reader(src, fmt, options)` picks one (fmt "auto" looks at the source); each yields `Sample`s that
`store_convert` fits to one size, assigns to splits and writes into the Parquet store.
"""

from __future__ import annotations

from pathlib import Path

from gradprom.platform.data.readers.base import STORED_DTYPES, Reader, ReadOptions, Sample
from gradprom.platform.data.readers.dicom import DicomReader
from gradprom.platform.data.readers.fit import Fitter
from gradprom.platform.data.readers.folder import IMAGE_SUFFIXES, FolderReader
from gradprom.platform.data.readers.medmnist import MedMNISTReader
from gradprom.platform.errors import DataError

FORMATS = ("auto", "medmnist", "folder", "dicom")
_READERS = {"medmnist": MedMNISTReader, "folder": FolderReader, "dicom": DicomReader}

__all__ = ["FORMATS", "STORED_DTYPES", "DicomReader", "Fitter", "FolderReader", "MedMNISTReader", "ReadOptions",
           "Reader", "Sample", "detect_format", "open_reader"]


def detect_format(src: str | Path, labels: str | None = None) -> str:
    """medmnist for a .npz, folder for a folder with images and a labels CSV, dicom for .dcm files."""
    p = Path(src)
    if not p.exists():
        raise DataError(f"Source {str(p)!r} does not exist; expected a MedMNIST .npz, an image folder with a "
                        f"labels CSV, or DICOM files.")
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return "medmnist"
        if p.suffix.lower() in IMAGE_SUFFIXES:
            raise DataError(f"Source {str(p)!r} is a single image; convert its folder (with a labels CSV) instead.")
        return "dicom"
    files = [f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")]
    if any(f.suffix.lower() in IMAGE_SUFFIXES for f in files) and ((p / "labels.csv").is_file() or labels):
        return "folder"
    if any(f.suffix.lower() == ".dcm" for f in files):
        return "dicom"
    if any(f.suffix.lower() in IMAGE_SUFFIXES for f in files):
        raise DataError(f"Image folder {str(p)!r} has no labels.csv; add one with columns file, label[, mask]"
                        f"[, site][, split] or pass --labels FILE.")
    raise DataError(f"Could not tell the format of {str(p)!r} (no .npz, no images with a labels CSV, no .dcm "
                    f"files); pass --format medmnist|folder|dicom.")


def open_reader(src: str | Path, fmt: str = "auto", options: ReadOptions | None = None) -> Reader:
    """The reader for `src` (format detected when `fmt` is "auto")."""
    if fmt not in FORMATS:
        raise DataError(f"format {fmt!r}; expected one of {', '.join(FORMATS)}.")
    if fmt == "auto":
        fmt = detect_format(src, options.labels if options else None)
    return _READERS[fmt](src, options or ReadOptions())

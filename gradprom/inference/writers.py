"""Write enhanced frames back in the input's own kind: PNG at the input's bit depth, a `.npz` with the same
keys, or a derived DICOM series. Every file is written atomically (temp name + rename).

DICOM: a copy of the input's header with new Series/SOP Instance UIDs (one new series per input series),
ImageType DERIVED\\SECONDARY, a DerivationDescription naming the run, Rows/Columns and PixelSpacing scaled for
super-resolution, and pixels mapped back through the window and the original RescaleSlope/Intercept into the
original stored type. Pixels the input window clipped (outside it) keep their original values, so nothing
outside the window the enhancer saw is lost.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gradprom.platform.atomic import atomic_path
from gradprom.platform.errors import DataError
from gradprom.platform.store.format import SCALE

from .sources import Item, npz_image_keys


def from_unit(y: np.ndarray, dtype: str) -> np.ndarray:
    """Unit-range float pixels -> the stored type (rounded to the nearest level for integer types)."""
    if dtype == "float32":
        return y.astype(np.float32)
    if dtype not in SCALE:
        raise DataError(f"cannot write pixels of type {dtype}; expected uint8, uint16 or float32.")
    return np.rint(np.clip(y, 0.0, 1.0) * SCALE[dtype]).astype(dtype)


def upsample_nearest(a: np.ndarray, scale: int, axes: tuple[int, int]) -> np.ndarray:
    """Repeat each pixel scale x scale times along `axes` (masks, original values for SR)."""
    return a if scale == 1 else np.repeat(np.repeat(a, scale, axis=axes[0]), scale, axis=axes[1])


class PngWriter:
    """out/<relative path>.png, grayscale 8/16-bit or RGB 8-bit, the input's depth."""

    def __init__(self, out: Path):
        self.out = out

    def write(self, item: Item, enhanced: np.ndarray) -> list[Path]:
        """Write one image; returns the file written."""
        img = from_unit(enhanced[0], item.meta["dtype"])
        arr = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
        dest = (self.out / item.name).with_suffix(".png")
        if dest.exists():  # a.jpg and a.png both become a.png: never replace another input's output
            raise DataError(f"{item.name}: its output {str(dest)!r} was already written for another input of the "
                            f"same name; rename one of them.")
        with atomic_path(dest) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG")
        return [dest]

    def close(self) -> list[Path]:
        return []


class NpzWriter:
    """out/<name>.npz: the image arrays enhanced (same dtype and layout), the other arrays copied (masks
    upsampled by nearest neighbour for SR so they keep matching). An array with a failed image is left out."""

    def __init__(self, out: Path, src: Path, scale: int):
        self.out, self.src, self.scale = out, src, scale
        self.done: dict[str, dict[int, np.ndarray]] = {}
        self.meta: dict[str, Any] | None = None

    def write(self, item: Item, enhanced: np.ndarray) -> list[Path]:
        m = item.meta
        self.meta = m
        img = from_unit(enhanced[0], m["dtype"])
        self.done.setdefault(m["key"], {})[m["index"]] = img[0] if m["layout"] == 3 else np.moveaxis(img, 0, -1)
        return []

    def close(self) -> list[Path]:
        """Write the .npz (when any image came out); returns it."""
        if self.meta is None:
            return []
        arrays, out = self.meta["arrays"], {}
        for k, a in arrays.items():
            if k in npz_image_keys(list(arrays)):
                got = self.done.get(k, {})
                if len(got) == len(a):  # complete: every image of the array came out
                    out[k] = np.stack([got[i] for i in range(len(a))])
            elif k.endswith("masks") and a.ndim == 3:
                out[k] = upsample_nearest(a, self.scale, (1, 2))
            else:
                out[k] = a
        dest = self.out / self.src.name
        buf = io.BytesIO()
        np.savez_compressed(buf, **out)
        with atomic_path(dest) as tmp:
            tmp.write_bytes(buf.getvalue())
        return [dest]


def stored_range(ds: pydicom.Dataset, dt: np.dtype) -> tuple[int, int]:
    """The values BitsStored allows (signed when PixelRepresentation is 1)."""
    bits = int(getattr(ds, "BitsStored", dt.itemsize * 8) or dt.itemsize * 8)
    if int(getattr(ds, "PixelRepresentation", 0) or 0):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


class DicomWriter:
    """out/<relative path>: a derived DICOM file per input file, one new series per input series."""

    def __init__(self, out: Path, scale: int, description: str):
        self.out, self.scale, self.description = out, scale, description
        self.series: dict[str, str] = {}  # input SeriesInstanceUID -> new one

    def write(self, item: Item, enhanced: np.ndarray) -> list[Path]:
        m, s = item.meta, self.scale
        src: pydicom.Dataset = m["ds"]
        unit = enhanced[:, 0].astype(np.float64)  # (frames, H, W)
        unit = 1.0 - unit if m["mono1"] else unit
        units = m["low"] + unit * m["width"]
        original = upsample_nearest(m["units"], s, (1, 2))
        outside = (original < m["low"]) | (original > m["low"] + m["width"])  # the window clipped these
        units = np.where(outside, original, units)
        slope, intercept = float(getattr(src, "RescaleSlope", 1) or 1), float(getattr(src, "RescaleIntercept", 0) or 0)
        dt = np.dtype(m["stored_dtype"])
        stored = (units - intercept) / slope
        if np.issubdtype(dt, np.integer):
            stored = np.clip(np.rint(stored), *stored_range(src, dt))
        stored = stored.astype(dt)

        ds = copy.deepcopy(src)
        old_series = str(getattr(src, "SeriesInstanceUID", "") or item.name)
        ds.SeriesInstanceUID = self.series.setdefault(old_series, generate_uid())
        ds.SOPInstanceUID = generate_uid()
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.DerivationDescription = self.description[:1024]
        ds.SeriesDescription = (f"{getattr(src, 'SeriesDescription', '')} GradProm enhanced").strip()[:64]
        if "SOPClassUID" in src and "SOPInstanceUID" in src:
            ref = pydicom.Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
            ds.SourceImageSequence = [ref]
        ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
        if s > 1 and "PixelSpacing" in src:
            ds.PixelSpacing = [float(v) / s for v in src.PixelSpacing]
        ds.PixelData = (stored[0] if stored.shape[0] == 1 and "NumberOfFrames" not in src else stored).tobytes()
        ds.file_meta = copy.deepcopy(src.file_meta) if hasattr(src, "file_meta") else pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # written uncompressed
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        dest = self.out / item.name
        with atomic_path(dest) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        return [dest]

    def close(self) -> list[Path]:
        return []

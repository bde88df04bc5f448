"""Image folder reader: PNG/JPEG files listed in a labels CSV.

CSV columns: `file` (path relative to the CSV's folder), and `label` and/or `mask` (a mask image file of class
ids), optionally `site` and `split` (train | val | test). Grayscale (8 or 16 bit) and RGB images; an alpha
channel is dropped and palette/CMYK images become RGB. Every problem names the CSV row and the file.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from gradprom.platform.data.readers.base import (
    SPLITS,
    ReadOptions,
    Sample,
    as_stored,
    check_label,
    check_mask,
    relative,
)
from gradprom.platform.errors import DataError, cut

log = logging.getLogger(__name__)
VERSION = "1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_KNOWN = ("file", "label", "mask", "site", "split")


def _open_image(path: Path) -> Image.Image:
    """Image.open, with PIL's decompression-bomb warning (between MAX_IMAGE_PIXELS and twice that; above, it
    raises) turned into an error too: a file that claims that many pixels is never decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def _bomb(path: Path, where: str, e: Exception) -> DataError:
    return DataError(f"{where}: {str(path)!r} declares an image too large to decode safely ({str(e)[:160]}); it is "
                     f"a decompression bomb, or a scan to downsample before converting (at most "
                     f"{Image.MAX_IMAGE_PIXELS} pixels).")


def read_image_file(path: Path, where: str) -> np.ndarray:
    """One PNG/JPEG -> (C, H, W) uint8 | uint16 | float32, or a DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{where}: file {str(path)!r} does not exist.")
    try:
        with _open_image(path) as im:
            im.load()
            mode = im.mode
            if mode in ("1", "LA"):
                im, mode = im.convert("L"), "L"
            elif mode not in ("L", "RGB", "I", "F") and not mode.startswith("I;16"):
                im, mode = im.convert("RGB"), "RGB"
            arr = np.array(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb(path, where, e) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: {str(path)!r} is not a readable PNG/JPEG image ({type(e).__name__}: {e}); "
                        f"it may be truncated or another kind of file.") from None
    if mode.startswith("I"):  # 16-bit grayscale (PIL may widen it to int32)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(f"{where}: {str(path)!r} has integer pixels outside 0..65535; expected 8/16-bit.")
        arr = arr.astype(np.uint16)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return as_stored(arr, f"{where}: {str(path)!r}")


def read_mask_file(path: Path, shape: tuple[int, int], where: str) -> np.ndarray:
    """A mask image of class ids (8/16-bit grayscale or palette indices) -> (H, W) uint8."""
    if not path.is_file():
        raise DataError(f"{where}: mask file {str(path)!r} does not exist.")
    try:
        with _open_image(path) as im:
            im.load()
            arr = np.array(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb(path, where, e) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where}: mask {str(path)!r} is not a readable image ({type(e).__name__}: {e}).") from None
    if arr.ndim != 2:
        raise DataError(f"{where}: mask {str(path)!r} has shape {arr.shape}; expected a one-channel image "
                        f"of class ids.")
    return check_mask(arr, shape, f"{where}: mask {str(path)!r}")


def read_labels_csv(csv_path: Path) -> list[dict[str, str]]:
    """Rows of the labels CSV, with its columns checked."""
    if not csv_path.is_file():
        raise DataError(f"Labels CSV {str(csv_path)!r} does not exist; an image folder needs one with columns "
                        f"file, label[, mask][, site][, split] (or pass --labels FILE).")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"Labels CSV {str(csv_path)!r} could not be read ({type(e).__name__}: {e}).") from None
    if "file" not in cols or not ({"label", "mask"} & set(cols)):
        raise DataError(f"Labels CSV {str(csv_path)!r} has columns {cols}; expected `file` and `label` and/or "
                        f"`mask` (optional: site, split).")
    unknown = [c for c in cols if c not in _KNOWN]
    if unknown:
        log.warning("%s: ignoring columns %s", csv_path, unknown)
    if not rows:
        raise DataError(f"Labels CSV {str(csv_path)!r} lists no images.")
    return rows


class FolderReader:
    """Samples of an image folder with a labels CSV (default <folder>/labels.csv)."""

    name = "folder"
    version = VERSION

    def __init__(self, path: str | Path, options: ReadOptions | None = None):
        self.root = Path(path)
        opts = options or ReadOptions()
        if not self.root.is_dir():
            raise DataError(f"Image folder {str(self.root)!r} does not exist or is not a folder.")
        self.csv = Path(opts.labels) if opts.labels else self.root / "labels.csv"
        self.rows = read_labels_csv(self.csv)
        self.base = self.csv.parent
        self.total = len(self.rows)
        for i, r in enumerate(self.rows):
            split = r.get("split", "")
            if split and split not in SPLITS:
                raise DataError(f"{self._where(i)}: split {cut(split)}; expected one of {', '.join(SPLITS)} or empty.")
            if not r.get("file"):
                raise DataError(f"{self._where(i)}: empty `file` cell; expected an image path.")

    def _where(self, i: int) -> str:
        return f"{self.csv} row {i + 2}"  # row 1 is the header

    def provenance(self) -> dict[str, Any]:
        """What was read and how."""
        return {"labels_csv": str(self.csv), "rows": len(self.rows)}

    def __iter__(self) -> Iterator[Sample]:
        for i, r in enumerate(self.rows):
            where = self._where(i)
            path = self.base / r["file"]
            image = read_image_file(path, where)
            label = check_label(r["label"], where) if r.get("label") else None
            mask = read_mask_file(self.base / r["mask"], image.shape[1:], where) if r.get("mask") else None
            if label is None and mask is None:
                raise DataError(f"{where}: {cut(r['file'])} has neither a label nor a mask.")
            yield Sample(image=image, source=relative(path, self.base), label=label, mask=mask,
                         split=r.get("split") or None, site=r.get("site") or None, group=r["file"])

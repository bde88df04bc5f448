"""Readers into the store, round trip: MedMNIST .npz, a PNG folder and DICOM files (series, multi-frame, with
rescale slope/intercept) read back pixel-identical after the documented transform; resize/crop on request only;
a second site keeps the first intact. The helpers here write real files and are shared by the other data tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from gradprom.platform.config import build_config
from gradprom.platform.data.npz import load_npz
from gradprom.platform.data.readers import ReadOptions
from gradprom.platform.data.readers.dicom import window_to_unit
from gradprom.platform.data.readers.fit import center_crop, resize_image
from gradprom.platform.data.sources import load_splits
from gradprom.platform.errors import DataError
from gradprom.platform.store.check import fingerprint
from gradprom.platform.store.convert import convert
from gradprom.platform.store.format import Store, decode_images

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-8675309"


# ---------------------------------------------------------------------------------------------------------
# helpers that write real files
def write_npz(path: Path, n=(12, 4, 6), side: int = 16, seed: int = 0, rgb: bool = False, **extra) -> Path:
    """A MedMNIST-style .npz: uint8 images, (N, 1) labels over 3 classes."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        shape = (k, side, side, 3) if rgb else (k, side, side)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(k) % 3).astype(np.uint8)[:, None]
    arrays.update(extra)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def write_png_folder(root: Path, n: int = 9, side: int = 16, seed: int = 0, sizes: list[int] | None = None,
                     rows: list[dict] | None = None, masks: bool = False, bits: int = 8) -> Path:
    """PNGs (8- or 16-bit gray) with labels.csv: file, label, split (and mask); rows override the CSV."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        s = (sizes or [side] * n)[i]
        if bits == 8:
            arr = rng.integers(0, 256, (s, s), dtype=np.uint8)
        else:
            arr = rng.integers(0, 65536, (s, s), dtype=np.uint16)
        Image.fromarray(arr).save(root / f"img{i}.png")
        row = {"file": f"img{i}.png", "label": str(i % 3), "split": ("train", "train", "val", "test")[i % 4]}
        if masks:
            Image.fromarray((arr > arr.mean()).astype(np.uint8)).save(root / f"mask{i}.png")
            row["mask"] = f"mask{i}.png"
        out.append(row)
    write_csv(root / "labels.csv", rows if rows is not None else out)
    return root


def write_csv(path: Path, rows: list[dict]) -> Path:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def write_dicom(path: Path, pixels: np.ndarray, slope: float = 1.0, intercept: float = 0.0,
                window: tuple[float, float] | None = None, series: str | None = None, z: float | None = None) -> Path:
    """A CT DICOM file (uint16 stored values); several frames when `pixels` is (F, H, W)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, PATIENT_ID, "19700101"
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", generate_uid(), series or generate_uid()
    frames = pixels.reshape(-1, *pixels.shape[-2:])
    ds.Rows, ds.Columns = frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
    if window:
        ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    if z is not None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0, 0, z]
        ds.InstanceNumber = int(z)
    ds.PixelData = frames.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def store_split(store: str | Path, split: str, site: str | None = None) -> tuple[np.ndarray, list, list[str]]:
    """(images float32, labels, sources) of one split (and site) read back from a store."""
    st = Store(store)
    xs, ys, srcs = [], [], []
    for part, t in st.iter_tables(st.select(split, [site] if site else None)):
        xs.append(decode_images(t, st.shape, part.path))
        ys += t.column("label").to_pylist()
        srcs += t.column("source").to_pylist()
    return np.concatenate(xs), ys, srcs


def cfg_for(source: str | Path, **data) -> object:
    return build_config({"task": "classification", "data": {"source": str(source), **data}})


# ---------------------------------------------------------------------------------------------------------
# MedMNIST
@pytest.mark.parametrize("rgb", [False, True])
def test_medmnist_round_trip_is_pixel_identical_to_load_npz(tmp_path, rgb):
    npz = write_npz(tmp_path / "m.npz", rgb=rgb)
    convert(npz, tmp_path / "st", site="h1", progress=False)
    ref, ref_info = load_npz(npz, "classification")
    sets, info = load_splits(cfg_for(tmp_path / "st"))
    assert (info.channels, info.image_size, info.num_classes) == (ref_info.channels, ref_info.image_size, 3)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(sets[split].images, ref[split].images)  # bit for bit
        np.testing.assert_array_equal(sets[split].labels, ref[split].labels)
        assert list(sets[split].sites) == ["h1"] * len(ref[split])
    assert Store(tmp_path / "st").parts[0].path.startswith("site=h1/split=train/")


def test_medmnist_float_images_are_kept_as_float32(tmp_path):
    rng = np.random.default_rng(1)
    imgs = {f"{s}_images": rng.random((4, 16, 16)) for s in ("train", "val", "test")}
    labels = {f"{s}_labels": np.array([0, 1, 0, 1]) for s in ("train", "val", "test")}
    npz = tmp_path / "f.npz"
    np.savez(npz, **imgs, **labels)
    convert(npz, tmp_path / "st", progress=False)
    x, _, _ = store_split(tmp_path / "st", "test")
    np.testing.assert_array_equal(x[:, 0], imgs["test_images"].astype(np.float32))


# ---------------------------------------------------------------------------------------------------------
# PNG folders
@pytest.mark.parametrize("bits", [8, 16])
def test_png_folder_round_trip(tmp_path, bits):
    folder = write_png_folder(tmp_path / "png", bits=bits)
    convert(folder, tmp_path / "st", site="h2", progress=False)
    scale = 255.0 if bits == 8 else 65535.0
    x, ys, srcs = store_split(tmp_path / "st", "train")
    for img, y, src in zip(x, ys, srcs):
        raw = np.array(Image.open(folder / src))
        np.testing.assert_array_equal(img[0], raw.astype(np.float32) / np.float32(scale))
        assert y == int(src[3:-4]) % 3
    st = Store(tmp_path / "st")
    assert {p.split for p in st.parts} == {"train", "val", "test"} and st.rows() == 9


def test_rgb_png_and_masks_round_trip(tmp_path):
    root = tmp_path / "rgb"
    root.mkdir()
    rng = np.random.default_rng(3)
    rows = []
    for i in range(6):
        arr = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"c{i}.jpg" if i == 0 else root / f"c{i}.png")
        Image.fromarray((arr[..., 0] % 3).astype(np.uint8)).save(root / f"m{i}.png")
        rows.append({"file": root.joinpath(f"c{i}.jpg" if i == 0 else f"c{i}.png").name, "mask": f"m{i}.png",
                     "site": "east" if i % 2 else "west", "split": "train" if i < 4 else "test"})
    write_csv(root / "labels.csv", rows)
    convert(root, tmp_path / "st", progress=False)  # sites from the CSV column
    st = Store(tmp_path / "st")
    assert st.shape == (3, 12, 20) and sorted(st.sites()) == ["east", "west"]
    assert st.seg_classes() == 3
    sets, info = load_splits(build_config({"task": "segmentation", "data": {"source": str(tmp_path / "st"),
                                                                            "sites": ["east"]}}))
    assert set(sets["train"].sites) == {"east"} and info.seg_classes == 3
    for i, (img, mask) in enumerate(zip(sets["train"].images, sets["train"].masks)):
        name = f"c{2 * i + 1}.png"  # east rows in train: 1, 3
        raw = np.array(Image.open(root / name))
        np.testing.assert_array_equal(img, np.moveaxis(raw, -1, 0).astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(mask, raw[..., 0] % 3)


def test_image_folder_as_data_source_matches_its_store(tmp_path):
    folder = write_png_folder(tmp_path / "png", n=12)
    convert(folder, tmp_path / "st", site="png", progress=False)
    a, _ = load_splits(cfg_for(folder))
    b, _ = load_splits(cfg_for(tmp_path / "st"))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a[split].images, b[split].images)
        np.testing.assert_array_equal(a[split].labels, b[split].labels)


# ---------------------------------------------------------------------------------------------------------
# DICOM
def test_dicom_series_and_multiframe_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    src = tmp_path / "dcm"
    vol = rng.integers(0, 4096, (3, 16, 16), dtype=np.uint16)
    uid = generate_uid()
    for k, z in enumerate([2.0, 0.0, 1.0]):  # written out of order: slices are sorted by position
        write_dicom(src / "series" / f"s{k}.dcm", vol[int(z)], slope=2.0, intercept=-1024.0, window=(40, 400),
                    series=uid, z=z)
    multi = rng.integers(0, 1000, (4, 16, 16), dtype=np.uint16)
    write_dicom(src / "multi.dcm", multi, slope=0.5, intercept=-100.0)  # no window: its min..max
    convert(src, tmp_path / "st", site="ct", split_by="test", progress=False)
    x, ys, srcs = store_split(tmp_path / "st", "test")
    by_src = dict(zip(srcs, x))
    for k in range(3):
        want = window_to_unit(vol[k].astype(np.float64) * 2.0 - 1024.0, 40, 400)
        np.testing.assert_array_equal(by_src[f"series#frame={k}"][0], want)
    hu = multi.astype(np.float64) * 0.5 - 100.0
    lo, hi = hu.min(), hu.max()
    for k in range(4):
        np.testing.assert_array_equal(by_src[f"multi.dcm#frame={k}"][0], window_to_unit(hu[k], (lo + hi) / 2, hi - lo))
    assert ys == [None] * 7
    # no patient identifier is copied anywhere into the store
    blob = b"".join(f.read_bytes() for f in (tmp_path / "st").rglob("*") if f.is_file())
    for ident in (PATIENT_NAME, PATIENT_ID, "Doe", "19700101"):
        assert ident.encode() not in blob


def test_dicom_chosen_window_and_axis(tmp_path):
    rng = np.random.default_rng(8)
    vol = rng.integers(0, 2000, (9, 16, 24), dtype=np.uint16)
    f = write_dicom(tmp_path / "v.dcm", vol, slope=1.0, intercept=-1000.0, window=(0, 100))
    labels = write_csv(tmp_path / "labels.csv", [{"file": "v.dcm", "label": "1"}])
    convert(f, tmp_path / "st", options=ReadOptions(window=(50.0, 1000.0), axis=2, labels=str(labels)),
            split_by="train", progress=False)
    x, ys, srcs = store_split(tmp_path / "st", "train")
    assert x.shape == (24, 1, 9, 16) and ys == [1] * 24  # sliced along columns: 24 images of 9 x 16
    want = window_to_unit(vol.astype(np.float64) - 1000.0, 50.0, 1000.0)
    np.testing.assert_array_equal(x[3, 0], want[:, :, 3])
    assert srcs[3] == "v.dcm#axis=2,slice=3"


# ---------------------------------------------------------------------------------------------------------
# one shape: resize or crop on request, never silently
def test_mixed_shapes_need_a_size(tmp_path):
    folder = write_png_folder(tmp_path / "png", n=4, sizes=[16, 16, 20, 16])
    with pytest.raises(DataError, match=r"img2\.png.*\(1, 20, 20\).*--size"):
        convert(folder, tmp_path / "st", progress=False)
    assert not (tmp_path / "st").exists()
    convert(folder, tmp_path / "crop", size=(16, 16), fit="crop", progress=False)
    convert(folder, tmp_path / "resize", size=(16, 16), progress=False)
    raw = np.array(Image.open(folder / "img2.png"))[None]
    for name, want in (("crop", center_crop(raw, (16, 16))), ("resize", resize_image(raw, (16, 16)))):
        x, _, srcs = store_split(tmp_path / name, "val")
        np.testing.assert_array_equal(x[srcs.index("img2.png")], want.astype(np.float32) / np.float32(255))
    assert Store(tmp_path / "resize").manifest["converts"][0]["options"]["fit"] == "resize"


# ---------------------------------------------------------------------------------------------------------
# appending a site keeps the first intact
def test_second_site_keeps_the_first_intact(tmp_path):
    st = tmp_path / "st"
    convert(write_npz(tmp_path / "a.npz", seed=1), st, site="a", progress=False)
    before = {p.relative_to(st): p.read_bytes() for p in st.rglob("*.parquet")}
    x_before, y_before, _ = store_split(st, "train", "a")
    convert(write_png_folder(tmp_path / "png", n=8), st, site="b", progress=False)
    for rel, data in before.items():
        assert (st / rel).read_bytes() == data
    x_after, y_after, _ = store_split(st, "train", "a")
    np.testing.assert_array_equal(x_after, x_before)
    assert y_after == y_before
    store = Store(st)
    assert store.sites() == ["a", "b"] and len(store.manifest["converts"]) == 2
    assert store.manifest["converts"][1]["format"] == "folder" and store.manifest["converts"][0]["reader_version"]
    sets, _ = load_splits(cfg_for(st))
    assert set(sets["train"].sites) == {"a", "b"}
    fp = fingerprint(st)
    with pytest.raises(DataError, match="shape"):  # a third site of another size is refused, the store untouched
        convert(write_npz(tmp_path / "c.npz", side=20), st, site="c", progress=False)
    assert fingerprint(st) == fp and Store(st).sites() == ["a", "b"]

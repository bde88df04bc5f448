"""Round trips: each input kind comes back in its own kind with the enhancer's values (PNG at its bit depth, a
.npz with the same keys, a new store with the same schema and provenance, a derived DICOM series in the
original units), and the manifest lists every input -> output with checksums."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from gradprom.cli import main
from gradprom.inference.pipeline import enhance_path, image_enhancer
from gradprom.platform.data.readers.base import Sample
from gradprom.platform.store.format import SCHEMA, Store, decode_images
from gradprom.platform.store.write import StoreWriter

from ._helpers import network, quantize


def _manifest(out):
    m = json.loads((out / "_enhance.json").read_text())
    for entry in m["outputs"]:
        for rel, digest in zip(entry["output"], entry["output_sha256"], strict=True):
            assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    return m


def test_png_8_and_16_bit_round_trip(plain_run, tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "pngs"
    (src / "sub").mkdir(parents=True)
    a8 = (rng.random((32, 32)) * 255).astype(np.uint8)
    a16 = (rng.random((40, 70)) * 65535).astype(np.uint16)  # larger than the 32x32 window: tiled
    Image.fromarray(a8).save(src / "a8.png")
    Image.fromarray(a16).save(src / "sub" / "b16.png")
    out = tmp_path / "out"
    summary = enhance_path(plain_run, src, out, progress=False)
    assert summary.images == 2 and not summary.failures

    with Image.open(out / "a8.png") as im:
        assert im.mode == "L"
        got8 = np.array(im)
    np.testing.assert_array_equal(got8, quantize(network(plain_run, a8[None] / np.float32(255))[0], 255))
    with Image.open(out / "sub" / "b16.png") as im:
        assert im.mode.startswith("I;16")
        got16 = np.array(im)
    assert got16.dtype == np.uint16 and got16.shape == (40, 70) and got16.max() > 255  # 16 bits kept
    want16 = image_enhancer(plain_run)(a16[None].astype(np.float32) / np.float32(65535))[0]
    np.testing.assert_array_equal(got16, quantize(want16, 65535))

    m = _manifest(out)
    assert sorted(e["input"][0] for e in m["outputs"]) == ["a8.png", "sub/b16.png"]
    assert m["images"] == 2 and m["failed"] == 0 and m["run"].endswith("plain")
    assert all(len(e["input_sha256"]) == 1 for e in m["outputs"])


def test_npz_round_trip_keeps_keys_dtype_and_labels(sr_run, tmp_path):
    rng = np.random.default_rng(1)
    images = (rng.random((3, 16, 16)) * 255).astype(np.uint8)
    masks = rng.integers(0, 3, (3, 16, 16)).astype(np.uint8)
    np.savez(tmp_path / "scans.npz", test_images=images, test_labels=np.array([0, 2, 1]), test_masks=masks)
    out = tmp_path / "out"
    assert enhance_path(sr_run, tmp_path / "scans.npz", out, progress=False).images == 3
    z = np.load(out / "scans.npz")
    assert sorted(z.files) == ["test_images", "test_labels", "test_masks"]
    assert z["test_images"].dtype == np.uint8 and z["test_images"].shape == (3, 32, 32)
    np.testing.assert_array_equal(z["test_labels"], [0, 2, 1])
    np.testing.assert_array_equal(z["test_masks"], masks.repeat(2, 1).repeat(2, 2))  # still matches the image
    for i in range(3):
        want = quantize(network(sr_run, images[i][None] / np.float32(255))[0], 255)
        np.testing.assert_array_equal(z["test_images"][i], want)
    assert _manifest(out)["outputs"][0]["output"] == ["scans.npz"]


def make_store(path, n=10, size=32, masks=False):
    """A store of two sites with labels (and masks): uint8 images, rows in site a (train, test) and b (train)."""
    rng = np.random.default_rng(3)
    for site, splits in (("a", ["train", "test"]), ("b", ["train"])):
        with StoreWriter(path, site, {"source": f"test site {site}"}) as w:
            for i in range(n):
                img = (rng.random((1, size, size)) * 255).astype(np.uint8)
                mask = rng.integers(0, 3, (size, size)).astype(np.uint8) if masks else None
                w.add(Sample(image=img, source=f"{site}/{i}.png", label=i % 3, mask=mask), splits[i % len(splits)])
    return Store(path)


def read_rows(store):
    """(site, split, source, label) -> decoded image, for every row."""
    out = {}
    for part, table in store.iter_tables(store.parts):
        imgs = decode_images(table, store.shape, part.path)
        for row, img in zip(table.to_pylist(), imgs, strict=True):
            out[(part.site, part.split, row["source"], row["label"])] = img
    return out


def test_store_round_trip_keeps_schema_rows_and_provenance(plain_run, tmp_path):
    src = make_store(tmp_path / "store")
    out = tmp_path / "enhanced"
    summary = enhance_path(plain_run, src.path, out, progress=False)
    assert summary.images == 20 and not summary.failures
    new = Store(out)
    assert new.shape == src.shape
    for part in new.parts:
        assert new.open_part(part).schema_arrow.equals(SCHEMA, check_metadata=False)
    assert new.manifest["converts"][:2] == src.manifest["converts"]  # the input's history is kept
    enh = new.manifest["converts"][2]
    assert enh["reader"] == "gradprom.enhance" and enh["run"].endswith("plain")
    before, after = read_rows(src), read_rows(new)
    assert before.keys() == after.keys()
    for key, img in before.items():
        np.testing.assert_array_equal(np.rint(after[key] * 255), quantize(network(plain_run, img), 255))
    m = _manifest(out)
    assert m["kind"] == "store" and len(m["outputs"][0]["input"]) == len(src.parts)
    assert main(["-q", "data", "check", str(out)]) == 0  # the store validator accepts it


def test_super_resolution_store_repeats_masks_to_the_new_size(sr_run, tmp_path):
    src = make_store(tmp_path / "store", n=4, size=16, masks=True)
    out = tmp_path / "enhanced"
    assert enhance_path(sr_run, src.path, out, progress=False).images == 8
    new = Store(out)
    assert new.shape == (1, 32, 32) and new.seg_classes() == src.seg_classes()
    before = {r["source"]: r["mask"] for _, t in src.iter_tables(src.parts) for r in t.to_pylist()}
    after = {r["source"]: r["mask"] for _, t in new.iter_tables(new.parts) for r in t.to_pylist()}
    assert before.keys() == after.keys()
    for k, m in before.items():
        want = np.frombuffer(m, np.uint8).reshape(16, 16).repeat(2, 0).repeat(2, 1)
        np.testing.assert_array_equal(np.frombuffer(after[k], np.uint8).reshape(32, 32), want)


def _ct_slice(path, k, series, pixels, window=None):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality, ds.InstanceNumber = series, "1.2.3.4", "CT", k + 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.PixelSpacing = 2, -1024, [0.7, 0.5]
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


@pytest.mark.parametrize("run_name", ["plain_run", "sr_run"])
def test_dicom_series_enhanced_into_a_derived_series(request, run_name, tmp_path):
    run = request.getfixturevalue(run_name)
    s, side = run.scale, 32 // run.scale
    rng = np.random.default_rng(4)
    src, series = tmp_path / "ct", generate_uid()
    src.mkdir()
    stored = [(rng.random((side, side)) * 600 + 300).astype(np.uint16) for _ in range(3)]
    originals = [_ct_slice(src / f"slice{k}.dcm", k, series, p) for k, p in enumerate(stored)]
    out = tmp_path / "out"
    assert enhance_path(run, src, out, progress=False).images == 3

    new_series = set()
    for k, orig in enumerate(originals):
        ds = pydicom.dcmread(out / f"slice{k}.dcm")
        new_series.add(ds.SeriesInstanceUID)
        assert ds.SOPInstanceUID != orig.SOPInstanceUID and ds.SeriesInstanceUID != series
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and run.name in ds.DerivationDescription
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == orig.SOPInstanceUID
        assert (ds.Rows, ds.Columns) == (side * s, side * s)
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.7 / s, 0.5 / s])
        assert (ds.RescaleSlope, ds.RescaleIntercept) == (2, -1024)
        # values in the original units: the enhancer's output mapped back through the file's min..max window
        units = stored[k].astype(np.float64) * 2 - 1024
        lo, width = units.min(), units.max() - units.min()
        want = lo + network(run, ((units - lo) / width).astype(np.float32)[None])[0] * width
        got = pydicom.pixels.apply_rescale(ds.pixel_array, ds)
        assert np.abs(got - want).max() <= 1.0 + 1e-6  # one stored level is 2 HU; rounding moves it at most half
    assert len(new_series) == 1  # one input series -> one derived series


def test_dicom_pixels_outside_the_window_keep_their_values(plain_run, tmp_path):
    rng = np.random.default_rng(5)
    pix = (rng.random((32, 32)) * 1000 + 100).astype(np.uint16)  # units -824 .. 1176 HU
    _ct_slice(tmp_path / "w.dcm", 0, generate_uid(), pix, window=(40, 400))  # window -160 .. 240 HU
    out = tmp_path / "out"
    enhance_path(plain_run, tmp_path / "w.dcm", out, progress=False)
    ds = pydicom.dcmread(out / "w.dcm")
    units = pix.astype(np.float64) * 2 - 1024
    outside = (units < -160) | (units > 240)
    assert outside.any() and (~outside).any()
    np.testing.assert_array_equal(ds.pixel_array[outside], pix[outside])
    got = pydicom.pixels.apply_rescale(ds.pixel_array, ds)[~outside]
    assert got.min() >= -160 - 1 and got.max() <= 240 + 1  # inside: the enhanced values, within the window

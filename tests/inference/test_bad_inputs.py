"""Bad inputs: each gives one clear line naming it (on stderr, `gradprom: error: ...`), the good inputs still
come out, the manifest lists both, and the exit code is 1. Through the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from gradprom.cli import main

from .test_outputs import _ct_slice

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("gradprom: error:")]


@pytest.mark.slow
def test_image_folder_with_bad_files_through_the_cli(runs_root, tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("good1.png", "good2.png"):
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(src / name)
    Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(src / "colour.png")  # wrong channels
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(src / "tiny.png")  # too small
    (src / "cut.png").write_bytes((src / "good1.png").read_bytes()[:40])  # truncated
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "gradprom.cli", "enhance", str(runs_root / "plain"), "--input",
                           str(src), "--out", str(out)], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = _errors(proc.stderr)
    assert len(errors) == 3, proc.stderr[-3000:]
    for name, words in (("colour.png", "3 channel(s)"), ("tiny.png", "5x5"), ("cut.png", "not a readable")):
        assert sum(name in e and words in e for e in errors) == 1, (name, errors)
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["_enhance.json", "good1.png", "good2.png"]
    assert "enhanced 2 images in" in proc.stdout and "images/s" in proc.stdout and "3 input(s) failed" in proc.stdout
    m = json.loads((out / "_enhance.json").read_text())
    assert sorted(f["input"] for f in m["failures"]) == ["colour.png", "cut.png", "tiny.png"]
    assert len(m["outputs"]) == 2


def test_npz_with_a_nan_image(runs_root, tmp_path, capsys):
    images = np.random.default_rng(1).random((3, 32, 32)).astype(np.float32)
    images[1, 4, 4] = np.nan
    np.savez(tmp_path / "x.npz", test_images=images, val_images=images[[0, 2]])
    code = main(["enhance", str(runs_root / "plain"), "--input", str(tmp_path / "x.npz"), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    errors = _errors(capsys.readouterr().err)
    assert code == 1 and len(errors) == 1
    assert "x.npz#test_images[1]" in errors[0] and "NaN" in errors[0] and "left out" in errors[0]
    z = np.load(tmp_path / "o" / "x.npz")
    assert z.files == ["val_images"] and z["val_images"].dtype == np.float32


def test_dicom_folder_with_a_file_without_pixels_and_a_foreign_file(runs_root, tmp_path, capsys):
    src = tmp_path / "ct"
    src.mkdir()
    series = generate_uid()
    for k in range(2):
        _ct_slice(src / f"s{k}.dcm", k, series, np.full((32, 32), 500 + k, np.uint16) + np.eye(32, dtype=np.uint16))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.save_as(src / "header_only.dcm", enforce_file_format=True)
    (src / "notes.bin").write_bytes(b"not a DICOM file")
    code = main(["enhance", str(runs_root / "plain"), "--input", str(src), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    captured = capsys.readouterr()
    errors = _errors(captured.err)
    assert code == 1 and len(errors) == 2, captured.err
    assert any("header_only.dcm" in e and "no pixel data" in e for e in errors)
    assert any("notes.bin" in e and "could not be read" in e for e in errors)
    assert sorted(p.name for p in (tmp_path / "o").glob("*.dcm")) == ["s0.dcm", "s1.dcm"]
    assert "enhanced 2 images" in captured.out


def test_whole_job_mistakes_exit_2_with_one_paragraph(runs_root, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("earlier output")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    cases = [
        (["enhance", str(tmp_path), "--input", str(tmp_path / "a.png"), "--out", str(tmp_path / "o1")],
         "run directory"),
        (["enhance", str(runs_root / "plain"), "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")],
         "does not exist"),
        (["enhance", str(runs_root / "plain"), "--input", str(tmp_path / "a.png"), "--out", str(tmp_path / "full")],
         "not an empty directory"),
        (["enhance", str(runs_root / "plain"), "--input", str(tmp_path / "a.png"), "--out", str(tmp_path / "o3"),
          "--workers", "2"], "not a store"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("gradprom: error:") and words in err and "Traceback" not in err, err

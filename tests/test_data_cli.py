"""`gradprom data convert | check | show` through the real command line: each bad input gives its one-paragraph
message (exit 2, no traceback) and leaves no store behind; a good one converts, appends, checks and shows; a
store larger than a memory cap trains through `gradprom train --data STORE` (streamed, never loaded whole)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradprom.cli import main
from gradprom.platform.data.readers.base import Sample
from gradprom.platform.store.check import fingerprint
from gradprom.platform.store.format import Store
from gradprom.platform.store.write import StoreWriter
from tests.platform.test_readers import write_csv, write_dicom, write_npz, write_png_folder


def _bad_png_folder(root: Path, defect: str) -> list[str]:
    """A PNG folder with one defect; returns extra CLI arguments."""
    write_png_folder(root, n=6, sizes=[16, 16, 16, 24, 16, 16] if defect == "mixed" else None)
    if defect == "truncated":
        (root / "img4.png").write_bytes((root / "img4.png").read_bytes()[:50])
    elif defect == "not_image":
        (root / "img4.png").write_text("this is not a picture\n")
    elif defect == "missing_file":
        (root / "img4.png").unlink()
    elif defect == "label_range":
        return ["--num-classes", "2"]  # labels go up to 2
    elif defect == "negative_label":
        rows = [{"file": f"img{i}.png", "label": str(-1 if i == 4 else 0)} for i in range(6)]
        write_csv(root / "labels.csv", rows)
    elif defect == "no_csv":
        (root / "labels.csv").unlink()
    return []


def _bad_dicom(root: Path, defect: str) -> list[str]:
    write_dicom(root / "ok.dcm", np.full((16, 16), 100, np.uint16))
    if defect == "dicom_junk":
        (root / "bad.dcm").write_bytes(b"\x00" * 200 + b"not dicom at all")
    elif defect == "dicom_truncated":
        f = write_dicom(root / "trunc.dcm", np.arange(256, dtype=np.uint16).reshape(16, 16))
        f.write_bytes(f.read_bytes()[:-100])
    return []


BAD = [  # (defect, source kind, message fragments)
    ("truncated", "png", ["labels.csv row 6", "img4.png", "not a readable PNG/JPEG", "truncated"]),
    ("not_image", "png", ["labels.csv row 6", "img4.png", "not a readable PNG/JPEG"]),
    ("missing_file", "png", ["labels.csv row 6", "img4.png", "does not exist"]),
    ("mixed", "png", ["img3.png", "(1, 24, 24)", "differs in size", "--size H W"]),
    ("label_range", "png", ["img2.png", "label 2 is out of range", "--num-classes 2"]),
    ("negative_label", "png", ["labels.csv row 6", "label '-1'"]),
    ("no_csv", "png", ["has no labels.csv"]),
    ("dicom_junk", "dicom", ["bad.dcm", "is not a DICOM file"]),
    ("dicom_truncated", "dicom", ["trunc.dcm", "could not be decoded", "truncated"]),
    ("bad_npz", "npz", ["could not be read as .npz"]),
]


@pytest.mark.parametrize("defect, kind, fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gives_its_message_and_no_store(tmp_path, capsys, defect, kind, fragments):
    src = tmp_path / "src"
    if kind == "png":
        extra = _bad_png_folder(src, defect)
    elif kind == "dicom":
        extra = _bad_dicom(src, defect)
    else:
        src = tmp_path / "m.npz"
        src.write_bytes(write_npz(tmp_path / "ok.npz").read_bytes()[:300])
        extra = []
    out = tmp_path / "store"
    rc = main(["data", "convert", str(src), str(out), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()  # GradProm's own INFO lines may come first (the default verbosity shows them)
    assert lines[-1].startswith("gradprom: error: ") and "Traceback" not in err
    assert sum(line.startswith("gradprom: error") for line in lines) == 1
    for frag in fragments:
        assert frag in err, (frag, err)
    assert not out.exists()


def test_bad_input_appended_to_a_store_leaves_it_untouched(tmp_path, capsys):
    store = tmp_path / "store"
    src_a = write_npz(tmp_path / "a.npz", seed=1)  # seed 0 would draw the PNGs' pixels: a duplicate, refused first
    assert main(["data", "convert", str(src_a), str(store), "--site", "a", "--no-progress"]) == 0
    fp = fingerprint(store)
    src = tmp_path / "png"
    _bad_png_folder(src, "truncated")
    assert main(["data", "convert", str(src), str(store), "--site", "b", "--no-progress"]) == 2
    assert "img4.png" in capsys.readouterr().err
    assert fingerprint(store) == fp and Store(store).sites() == ["a"]


@pytest.mark.parametrize("argv, fragment", [
    (["--crop"], "--crop needs --size H W"),
    (["--site", "bad/site"], "--site 'bad/site'"),
    (["--split-by", "random:0.5,0.5"], "three fractions"),
    (["--format", "dicom"], "is not a DICOM file"),
])
def test_bad_options_are_clean_errors(tmp_path, capsys, argv, fragment):
    rc = main(["data", "convert", str(write_npz(tmp_path / "a.npz")), str(tmp_path / "st"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and "Traceback" not in err and not (tmp_path / "st").exists()


def test_convert_append_check_show(tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["data", "convert", str(write_npz(tmp_path / "h1.npz", side=16)), str(store), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "h1" in out and "train" in out and "1x16x16" in out and "0:4 1:4 2:4" in out
    folder = write_png_folder(tmp_path / "png", n=8, side=20)
    assert main(["data", "convert", str(folder), str(store), "--site", "h2", "--size", "16", "16", "--crop",
                 "--split-by", "random:0.5,0.25,0.25", "--seed", "1", "--no-progress"]) == 0
    assert "in sites h1, h2" in capsys.readouterr().out
    assert main(["data", "check", str(store)]) == 0
    assert main(["data", "show", str(store), "--out", str(tmp_path / "grid.png")]) == 0
    with Image.open(tmp_path / "grid.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert not list(tmp_path.glob(".grid.png*"))  # written atomically: no temp file left


# ---------------------------------------------------------------------------------------------------------
# a store larger than a memory cap trains, streamed
SIDE, ROWS = 256, 6400  # 6400 images of 256 x 256: 1.6 GB as float32 in memory, 420 MB of uint8 on disk
RSS_CAP_MB = 1300  # the training process must stay under this (peak resident memory)

_PEAK = textwrap.dedent("""
    import resource, sys
    {body}
    print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
""")


def _write_big_store(path: Path) -> None:
    base = (np.add.outer(np.arange(SIDE), np.arange(SIDE)) % 251).astype(np.uint8)  # compressible content
    with StoreWriter(path, "big", {"source": "test"}) as w:
        for i in range(ROWS):
            img = np.roll(base, i, axis=1)[None]
            w.add(Sample(image=np.ascontiguousarray(img), source=f"big#{i}", label=i % 2), "train")
    small = np.random.default_rng(0).integers(0, 256, (1, SIDE, SIDE), dtype=np.uint8)
    with StoreWriter(path, "small", {"source": "test"}) as w:
        for i in range(16):
            w.add(Sample(image=np.roll(small, i, axis=2), source=f"small#{i}", label=i % 2), "val" if i < 8 else "test")


def _run_peak(body: str, cwd: Path) -> tuple[float, str]:
    # one intra-op thread: on small VMs torch's thread wake-ups make per-image ops ~100x slower (measured)
    res = subprocess.run([sys.executable, "-c", _PEAK.format(body=body)], capture_output=True, text=True, cwd=cwd,
                         timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    peak = float(res.stdout.split("PEAK_RSS_MB")[-1])
    return peak, res.stdout


@pytest.mark.slow
def test_store_larger_than_memory_cap_trains_streamed(tmp_path):
    store = tmp_path / "big"
    _write_big_store(store)
    st = Store(store)
    assert st.decoded_bytes() / 2**20 > 1.2 * RSS_CAP_MB  # loading it whole could not fit under the cap
    # 1) one full epoch of the training loader: every row once, memory bounded
    body = textwrap.dedent(f"""
        from gradprom.platform.config import build_config
        from gradprom.platform.data.sources import build_datasets
        from gradprom.platform.build import train_loader
        cfg = build_config({{"data": {{"source": {str(store)!r}, "batch_size": 64, "shuffle_buffer": 64}}}})
        ds, info, _ = build_datasets(cfg)
        assert type(ds["train"]).__name__ == "StreamingEnhancementDataset", type(ds["train"])
        seen = []
        for b in train_loader(ds["train"], cfg, 0):
            seen += b["index"].tolist()
        assert sorted(seen) == list(range({ROWS})), len(seen)
        print("EPOCH_OK", len(seen))
    """)
    peak, out = _run_peak(body, tmp_path)
    assert "EPOCH_OK 6400" in out and peak < RSS_CAP_MB, peak
    # 2) the real command: gradprom train --data STORE (auto picks streaming for a store this size)
    body = textwrap.dedent(f"""
        from gradprom.cli import main
        rc = main(["-q", "train", "--data", {str(store)!r}, "--epochs", "1", "--max-steps-per-epoch", "3",
                   "--batch-size", "8", "--device", "cpu", "--out", "runs", "--name", "big",
                   "--set", "data.shuffle_buffer=64", "--set", "model.enhancer_channels=[4,8]",
                   "--set", "model.recognizer_channels=[4,8]"])
        assert rc == 0, rc
    """)
    peak, out = _run_peak(body, tmp_path)
    assert "run finished" in out and peak < RSS_CAP_MB, peak

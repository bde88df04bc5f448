"""User mistakes on the command line: exit code 2, one paragraph on stderr that starts with "gradprom: error:"
and names the field or file and what is expected, no traceback, and no half-written file left behind.

The table runs `gradprom.cli.main(argv)` (what the `gradprom` script calls) in this process, since a
subprocess costs ~6 s of imports per case; an uncaught exception would fail the test with its traceback.
`test_real_process_*` checks the same contract through a real `python -m gradprom.cli` process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from gradprom.cli import main
from gradprom.platform.store.convert import convert

TINY = ["--set", "data.num_train=32", "--set", "data.num_val=16", "--set", "data.num_test=16",
        "--set", "data.image_size=32", "--set", "data.batch_size=8", "--epochs", "1", "--max-steps-per-epoch", "2",
        "--set", "model.enhancer_channels=[8,16]", "--set", "model.recognizer_channels=[8,16]"]


# ---------------------------------------------------------------------------------------------------------
# bad inputs on disk
def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 3, (n,), dtype=np.int64)


def _splits(rng: np.random.Generator, **override: np.ndarray) -> dict[str, np.ndarray]:
    arrays = {f"{s}_{k}": (_images if k == "images" else _labels)(rng, n)
              for s, n in (("train", 16), ("val", 8), ("test", 8)) for k in ("images", "labels")}
    return {**arrays, **override}


@dataclass
class Inputs:
    root: Path
    base_run: Path  # a finished run (for --resume / evaluate / re-used names)
    damaged_run: Path  # a copy of it whose latest checkpoint is junk

    def file(self, name: str) -> str:
        return str(self.root / name)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("bad-inputs")
    rng = np.random.default_rng(0)
    np.savez(root / "good.npz", **_splits(rng))
    data = (root / "good.npz").read_bytes()
    (root / "trunc.npz").write_bytes(data[: len(data) * 2 // 3])  # a valid archive, cut short

    nan_images = rng.random((16, 32, 32)).astype(np.float32)
    nan_images[3, 4, 5] = np.nan
    np.savez(root / "nanpixels.npz", **_splits(rng, train_images=nan_images))
    labels = _labels(rng, 16)
    labels[5] = -1
    np.savez(root / "neglabels.npz", **_splits(rng, train_labels=labels))
    np.savez(root / "emptysplit.npz", **_splits(rng, val_images=np.zeros((0, 32, 32), np.uint8),
                                                  val_labels=np.zeros((0,), np.int64)))
    (root / "bad.yaml").write_text("data: [unclosed\n  source: : phantoms\n")
    _hostile_inputs(root, rng)

    # a real run, trained in this process
    code = main(["-q", "train", *TINY, "--out", str(root / "runs"), "--name", "base"])
    assert code == 0
    base = root / "runs" / "base"
    ckpt = (base / "checkpoints" / "latest.pt").read_bytes()
    (root / "trunc.pt").write_bytes(ckpt[: len(ckpt) // 2])  # a checkpoint cut short
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)  # zip magic, then junk
    (root / "junk.pt").write_bytes(b"junk")
    damaged = root / "damaged-run"
    shutil.copytree(base, damaged)
    (damaged / "checkpoints" / "latest.pt").write_bytes(b"junk")
    shutil.copytree(base, root / "damaged-epochs")
    (root / "damaged-epochs" / "epochs.parquet").write_bytes((base / "epochs.parquet").read_bytes()[:100])
    evil = torch.load(base / "checkpoints" / "latest.pt", weights_only=True)
    evil["evil"] = _Evil()
    torch.save(evil, root / "evil.pt")
    return Inputs(root, base, damaged)


class _Evil:
    def __reduce__(self):  # what a malicious checkpoint carries; weights_only loading must refuse to run it
        return (os.system, ("echo should-never-run",))


def _png(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims width x height (a decompression bomb: PIL checks the size on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _folder(root: Path, name: str, rows: list[tuple[str, str]], rng: np.random.Generator) -> None:
    """An image folder: (file, label) rows; files named big*/warn* are bombs, small* 16x16, the others 32x32."""
    d = root / name
    d.mkdir()
    for f, _ in rows:
        if f.startswith(("big", "warn")):
            _png(d / f, *((30000, 30000) if f.startswith("big") else (10000, 10000)))
        else:
            side = 16 if f.startswith("small") else 32
            Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(d / f)
    splits = ["train"] * (len(rows) - 1) + ["test"]
    (d / "labels.csv").write_text("file,label,split\n" + "".join(f"{f},{lab},{sp}\n" for (f, lab), sp in
                                                                 zip(rows, splits, strict=True)))


def _hostile_inputs(root: Path, rng: np.random.Generator) -> None:
    """The reliability review's hostile-but-ordinary inputs (issue 15, items 5 and 6)."""
    huge = _labels(rng, 16)
    huge[2] = 2**40
    np.savez(root / "hugelabel.npz", **_splits(rng, train_labels=huge))
    for side in (8, 16):
        arrays = {f"{s}_{k}": (rng.integers(0, 256, (n, side, side), dtype=np.uint8) if k == "images" else
                               _labels(rng, n)) for s, n in (("train", 16), ("val", 8), ("test", 8))
                  for k in ("images", "labels")}
        np.savez(root / f"side{side}.npz", **arrays)
    _folder(root, "hugecsv", [("a.png", "0"), ("b.png", "99999999999")], rng)
    _folder(root, "bomb", [("a.png", "0"), ("big.png", "1"), ("b.png", "1")], rng)
    _folder(root, "bombwarn", [("a.png", "0"), ("warn.png", "1"), ("b.png", "1")], rng)
    _folder(root, "mixed", [("a.png", "0"), ("small.png", "1"), ("b.png", "1")], rng)
    (root / "optim5.yaml").write_text("optim: 5\n")
    (root / "cfgdir").mkdir()
    convert(root / "good.npz", root / "store", site="a", progress=False)
    for name, edit in (("shape2", {"shape": [1, 32]}), ("version2", {"version": "2"})):
        shutil.copytree(root / "store", root / name)
        m = json.loads((root / name / "_store.json").read_text())
        (root / name / "_store.json").write_text(json.dumps({**m, **edit}))
    nan = rng.random((16, 32, 32)).astype(np.float32)
    nan[:, 3, 3] = np.nan  # the .npz path refuses these; build the store from a clean file, then poison its pixels
    clean = nan.copy()
    clean[:, 3, 3] = 0.5
    np.savez(root / "float.npz", **_splits(rng, train_images=clean))
    convert(root / "float.npz", root / "nanstore", site="a", progress=False)
    part = next((root / "nanstore").glob("site=a/split=train/*.parquet"))
    t = pq.read_table(part)
    images = [np.frombuffer(b, np.float32).copy() for b in t.column("image").to_pylist()]
    for img in images:
        img[3 * 32 + 3] = np.nan
    pq.write_table(t.set_column(0, "image", pa.array([img.tobytes() for img in images], pa.binary())), part)


# ---------------------------------------------------------------------------------------------------------
# the table: id -> (argv after the command, given the inputs; substrings the message must hold)
Argv = Callable[[Inputs], list[str]]


def train(*args: str) -> Argv:
    return lambda i: ["train", *TINY, *args]


CASES: dict[str, tuple[Argv, list[str]]] = {
    "tau-out-of-range": (train("--tau", "2"), ["config field `gradprom.tau`", "got 2.0", "less than or equal to 1"]),
    "unknown-strategy": (train("--strategy", "nope"),
                         ["config field `gradprom.strategy`", "'nope'", "choose one of", "torchjd:NAME"]),
    "unknown-torchjd-aggregator": (train("--strategy", "torchjd:NotAThing"),
                                   ["config field `gradprom.strategy`", "`NotAThing` is not a torchjd aggregator",
                                    "UPGrad"]),
    "layer-granularity-with-joint": (train("--granularity", "layer", "--strategy", "joint"),
                                     ["`granularity: layer`", "'cosine_weighted' and 'gradprom'", "got 'joint'"]),
    "output-gate-with-pcgrad": (train("--gate-space", "output", "--strategy", "pcgrad"),
                                ["`gate_space: output`", "supports strategies", "got 'pcgrad'"]),
    "resnet-cannot-segment": (train("--task", "segmentation", "--set", "model.recognizer=resnet"),
                              ["`model.recognizer: resnet`", "`task: segmentation`", "unet"]),
    "unknown-config-field": (train("--set", "optim.nope=1"), ["unknown config field `optim.nope`"]),
    "set-without-value": (train("--set", "nope"), ["--set expects `section.field=value`", "'nope'"]),
    "unknown-degradation": (train("--degradation", "sr3"),
                            ["config field `data.degradation`", "'sr3'", "sr2", "sr4"]),
    "bad-downsample-factor": (train("--degradation", "downsample:factor=3"),
                              ["config field `data.degradation`", "downsample:factor must be 2 or 4", "found 3"]),
    "missing-npz": (train("--data", "missing.npz"), ["'missing.npz' does not exist", "MedMNIST-style .npz"]),
    "truncated-npz": (lambda i: ["train", *TINY, "--data", i.file("trunc.npz")],
                      ["trunc.npz", "could not be read as .npz", "truncated"]),
    "nan-pixels": (lambda i: ["train", *TINY, "--data", i.file("nanpixels.npz")],
                   ["nanpixels.npz", "`train_images`", "NaN/Inf pixels", "image 3"]),
    "negative-label": (lambda i: ["train", *TINY, "--data", i.file("neglabels.npz")],
                       ["neglabels.npz", "`train_labels`", "label -1 at index 5", "0..K-1"]),
    "empty-split": (lambda i: ["train", *TINY, "--data", i.file("emptysplit.npz")],
                    ["emptysplit.npz", "`val_images`", "is empty", "at least one image"]),
    "missing-config-file": (train("--config", "missing.yaml"), ["'missing.yaml' does not exist", "YAML file"]),
    "invalid-yaml": (lambda i: ["train", "--config", i.file("bad.yaml"), *TINY], ["bad.yaml", "is not valid YAML"]),
    "frozen-without-checkpoint": (train("--recognizer-mode", "frozen"),
                                  ["`recognizer_mode: frozen` needs `recognizer_checkpoint`"]),
    "frozen-truncated-checkpoint": (lambda i: ["train", *TINY, "--recognizer-mode", "frozen",
                                               "--recognizer-checkpoint", i.file("trunc.pt")],
                                    ["Recognizer checkpoint", "trunc.pt", "could not be loaded", "truncated"]),
    "frozen-missing-checkpoint": (train("--recognizer-mode", "frozen", "--recognizer-checkpoint", "gone.pt"),
                                  ["`gradprom.recognizer_checkpoint`", "'gone.pt' does not exist"]),
    "evaluate-missing-run": (lambda i: ["evaluate", "/nonexistent"],
                             ["'/nonexistent' is not a run directory", "no config.yaml"]),
    "resume-missing-run": (lambda i: ["train", "--resume", "/nonexistent"],
                           ["--resume '/nonexistent'", "not a run directory", "no config.yaml"]),
    "reused-run-name": (lambda i: ["train", *TINY, "--out", str(i.base_run.parent), "--name", "base"],
                        ["already holds a run", "base", "--resume", "--name / --out"]),
    "evaluate-corrupt-checkpoint": (lambda i: ["evaluate", str(i.base_run), "--checkpoint", i.file("corrupt.pt")],
                                    ["Checkpoint", "corrupt.pt", "damaged or not a GradProm checkpoint"]),
    "evaluate-truncated-checkpoint": (lambda i: ["evaluate", str(i.base_run), "--checkpoint", i.file("trunc.pt")],
                                      ["Checkpoint", "trunc.pt", "damaged or not a GradProm checkpoint"]),
    "evaluate-junk-checkpoint": (lambda i: ["evaluate", str(i.base_run), "--checkpoint", i.file("junk.pt")],
                                 ["Checkpoint", "junk.pt", "damaged or not a GradProm checkpoint"]),
    "resume-junk-checkpoint": (lambda i: ["train", "--resume", str(i.damaged_run), "--epochs", "2"],
                               ["Checkpoint", "damaged-run/checkpoints/latest.pt", "damaged or not a GradProm"]),
    "resume-with-other-networks": (lambda i: ["train", "--resume", str(i.base_run), "--epochs", "2",
                                              "--set", "model.enhancer_channels=[4,8]"],
                                   ["--resume", "does not fit the configuration", "size mismatch for",
                                    "change only settings such as --epochs"]),
    "resume-as-other-task": (lambda i: ["train", "--resume", str(i.base_run), "--epochs", "2", "--task",
                                        "segmentation"], ["--resume", "does not fit the configuration"]),
    "infinite-learning-rate": (train("--lr", "inf"), ["config field `optim.lr`", "got inf", "finite number"]),
    "evaluate-missing-checkpoint": (lambda i: ["evaluate", str(i.base_run), "--checkpoint", "gone.pt"],
                                    ["Checkpoint 'gone.pt' does not exist"]),
    # ---- issue 15: hostile but ordinary input -------------------------------------------------------------
    "huge-label-npz": (lambda i: ["train", *TINY, "--data", i.file("hugelabel.npz")],
                       ["hugelabel.npz", "`train_labels` at index 2", "label 1099511627776", "at most 1000 classes"]),
    "huge-label-csv": (lambda i: ["train", *TINY, "--data", i.file("hugecsv")],
                       ["labels.csv row 3", "label 99999999999", "at most 1000 classes", "relabel"]),
    "huge-label-convert": (lambda i: ["data", "convert", i.file("hugecsv"), i.file("nostore1"), "--no-progress"],
                           ["labels.csv row 3", "at most 1000 classes"]),
    "decompression-bomb-train": (lambda i: ["train", *TINY, "--data", i.file("bomb")],
                                 ["labels.csv row 3", "big.png", "too large to decode safely", "decompression bomb"]),
    "decompression-bomb-warning-convert": (lambda i: ["data", "convert", i.file("bombwarn"), i.file("nostore2"),
                                                      "--no-progress"],
                                           ["warn.png", "too large to decode safely", "100000000 pixels"]),
    "too-small-for-sr4": (lambda i: ["train", *TINY, "--data", i.file("side8.npz"), "--degradation", "sr4"],
                          ["side8.npz", "images of 8x8 pixels are too small for the enhancer", "2x2 inputs",
                           "sr4", "channels [8, 16]"]),
    "too-small-for-six-levels": (lambda i: ["train", *TINY, "--data", i.file("side16.npz"),
                                            "--set", "model.enhancer_channels=[4,4,4,4,4,4]"],
                                 ["16x16 pixels are too small for the enhancer", "[4, 4, 4, 4, 4, 4]",
                                  "`model.enhancer_channels`"]),
    "resume-damaged-epochs": (lambda i: ["train", "--resume", i.file("damaged-epochs"), "--epochs", "2"],
                              ["epochs.parquet", "is damaged", "move it away"]),
    "store-shape-of-two": (lambda i: ["train", *TINY, "--data", i.file("shape2")],
                           ["_store.json", "`shape` is [1, 32]", "[C, H, W]", "damaged"]),
    "store-version-string": (lambda i: ["train", *TINY, "--data", i.file("version2")],
                             ["_store.json", "`version` is '2'", "whole number"]),
    "store-nan-pixels": (lambda i: ["train", *TINY, "--data", i.file("nanstore")],
                         ["nanstore", "NaN/Inf pixels", "gradprom data check"]),
    "section-not-a-mapping": (lambda i: ["train", "--config", i.file("optim5.yaml"), *TINY],
                              ["config section `optim` is 5", "`optim.epochs`", "not a mapping"]),
    "name-escapes-out": (train("--name", "../../escaped"), ["config field `run.name`", "'../../escaped'",
                                                              "single directory name"]),
    "name-dot": (train("--name", "."), ["config field `run.name`", "got '.'"]),
    "set-without-field": (train("--set", "=1"), ["--set expects `section.field=value`", "'=1'", "missing"]),
    "config-is-a-directory": (lambda i: ["train", "--config", i.file("cfgdir"), *TINY],
                              ["cfgdir' is a directory", "YAML file"]),
    "mixed-sizes-folder-train": (lambda i: ["train", *TINY, "--data", i.file("mixed")],
                                 ["small.png", "differs in size", "gradprom data convert", "--size H W",
                                  "then train with --data STORE"]),
    "malicious-checkpoint": (lambda i: ["evaluate", str(i.base_run), "--checkpoint", i.file("evil.pt")],
                             ["evil.pt", "GradProm loads weights only", "may be unsafe or damaged"]),
}


def error_paragraph(err: str) -> str:
    """The one error line: the last line of stderr, and the only one starting with "gradprom: error:"."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    errors = [ln for ln in lines if ln.startswith("gradprom: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


def no_temp_files(*dirs: Path) -> None:
    for d in dirs:
        left = [str(p) for p in d.rglob("*.tmp")]
        assert not left, f"half-written files left behind: {left}"


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clean_error(case, inputs, tmp_path, monkeypatch, capfd):
    argv_of, expected = CASES[case]
    monkeypatch.chdir(tmp_path)  # relative paths (missing.npz, the default runs/) land here
    argv = argv_of(inputs)
    if argv[0] == "train" and "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "runs")]
    before = snapshot(inputs.base_run)

    code = main(argv)
    out, err = capfd.readouterr()

    assert code == 2, (code, out, err)
    msg = error_paragraph(err)
    for s in expected:
        assert s in msg, f"{s!r} not in {msg!r}"
    assert "run finished" not in out
    no_temp_files(tmp_path, inputs.root)
    # nothing was started by a rejected command, and the existing run is untouched
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("checkpoints/*.pt"))
    assert snapshot(inputs.base_run) == before


def test_absurd_learning_rate_stops_naming_step_and_cause(inputs, tmp_path, capfd):
    # step 1 moves every weight by ~lr (Adam), so from step 2 on the losses are NaN/Inf and the steps skipped
    out_dir = tmp_path / "runs"
    code = main(["train", *TINY, "--max-steps-per-epoch", "4", "--lr", "1e30", "--set", "optim.max_nonfinite_streak=2",
                 "--out", str(out_dir), "--name", "diverged"])
    out, err = capfd.readouterr()

    assert code == 2, (code, out, err)
    msg = error_paragraph(err)
    m = re.search(r"Training stopped at step (\d+): 2 steps in a row had a NaN/Inf", msg)
    assert m, msg
    assert "learning rate too high" in msg and "`optim.lr`" in msg and "optim.max_nonfinite_streak" in msg

    run = out_dir / "diverged"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and info["end"]
    assert info["error"].startswith("TrainingError: Training stopped at step"), info["error"]
    # the skipped steps were logged before it stopped, and no checkpoint was written (none half-written)
    steps = pq.read_table(sorted((run / "steps").glob("*.parquet"))).to_pylist()
    stopped_at = int(m.group(1))
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
    assert stopped_at - 1 <= len(steps) <= stopped_at
    assert not steps[0]["skipped"] and sum(r["skipped"] for r in steps) >= 1
    assert not list((run / "checkpoints").iterdir())
    no_temp_files(run)


@pytest.mark.slow
def test_real_process_cuda_without_gpu_is_a_clean_error(tmp_path):
    """Through the real `python -m gradprom.cli` (exit status, stderr); CUDA is hidden, so this holds everywhere."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "gradprom.cli", "train", *TINY, "--device", "cuda",
                           "--out", str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    msg = error_paragraph(proc.stderr)
    assert "config field `run.device`" in msg and "no CUDA device is available" in msg and "'cpu'" in msg
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.pt"))
    no_temp_files(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# issue 15: repaired, warned about or failed instead of a silent "finished"
def test_resume_with_a_damaged_run_json_repairs_it_and_says_so(inputs, tmp_path, capfd, caplog):
    run = tmp_path / "run"
    shutil.copytree(inputs.base_run, run)
    (run / "run.json").write_bytes((run / "run.json").read_bytes()[:40])  # cut mid-write by an old version
    code = main(["train", "--resume", str(run), "--epochs", "2"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "run.json was damaged: moved it to run.json.damaged" in caplog.text and "Traceback" not in err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["test"] and (run / "run.json.damaged").is_file()


def test_a_run_whose_every_step_of_an_epoch_is_skipped_fails(inputs, tmp_path, capfd):
    # lr 1e30: step 1 trains, every later step is NaN and skipped; the streak limit is out of reach, so before
    # the fix epoch 2 ended "finished" with nothing trained
    code = main(["train", *TINY, "--epochs", "2", "--max-steps-per-epoch", "3", "--lr", "1e30",
                 "--set", "optim.max_nonfinite_streak=100", "--out", str(tmp_path / "runs"), "--name", "allnan"])
    out, err = capfd.readouterr()
    assert code == 2, (out, err)
    msg = error_paragraph(err)
    assert "Every step of epoch 2 (3 steps) was skipped" in msg and "`optim.lr`" in msg
    info = json.loads((tmp_path / "runs" / "allnan" / "run.json").read_text())
    assert info["status"] == "failed" and "Every step of epoch 2" in info["error"]


def test_sparse_labels_train_with_a_warning_naming_the_unseen_classes(tmp_path, capfd, caplog):
    rng = np.random.default_rng(1)
    arrays = _splits(rng)
    for k in ("train_labels", "val_labels", "test_labels"):
        arrays[k][0] = 7  # 0..2 plus one 7: an 8-class head, classes 3..6 never seen
    np.savez(tmp_path / "sparse.npz", **arrays)
    code = main(["train", *TINY, "--max-steps-per-epoch", "1", "--data", str(tmp_path / "sparse.npz"),
                 "--out", str(tmp_path / "runs")])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert "labels go up to 7, so the recognizer gets 8 outputs, but class ids 3, 4, 5, 6 occur in no split" in \
        caplog.text

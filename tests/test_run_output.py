"""A real `gradprom train` in a subprocess (so its output is not a terminal), local (with -v) and on one Ray Train
worker (default verbosity): plain progress lines, the next commands, <run>/log.txt, the figures, and the
TensorBoard mirror read back from its event files; by default Ray's own lines stay off the console but land in
the run's log, and -v brings the libraries' lines back."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
TINY = ["--epochs", "2", "--max-steps-per-epoch", "2", "--set", "data.num_train=32", "--set", "data.num_val=16",
        "--set", "data.num_test=16", "--set", "data.image_size=32", "--set", "data.batch_size=8",
        "--set", "model.enhancer_channels=[4,8]", "--set", "model.recognizer_channels=[4,8]"]


def train(*args: str, verbosity: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gradprom.cli", *verbosity, "train", *TINY, *args],
                          capture_output=True, text=True, env=ENV, timeout=400)


def read_events(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every event file under `logdir`, read from the TFRecord framing with tensorboardX's protobuf."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert files, f"no event files in {logdir}"
    for f in files:
        data = f.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = Event.FromString(data[pos + 12:pos + 12 + n])  # length, its crc, the record, its crc
            pos += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = train("--out", str(out), "--name", "r", "--set", "run.tensorboard=true", verbosity=("-v",))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, out / "r"


def test_progress_lines_and_next_commands_off_a_terminal(local_run):
    proc, run = local_run
    err = proc.stderr
    assert "DEBUG matplotlib" in err  # -v: the libraries' own lines are back (matplotlib logs on import)
    assert "loading data (phantoms)" in err
    for e in (1, 2):
        for s in (1, 2):
            assert f"epoch {e}/2 step {s}/2" in err, err
    assert "s/step" in err and "gate-open" in err and "cos " in err
    assert "\x1b[" not in err  # no colour codes into a pipe
    assert f"gradprom evaluate {run}" in proc.stdout and f"gradprom dashboard --runs {run.parent}" in proc.stdout
    log = (run / "log.txt").read_text()
    assert "epoch 2/2  val psnr" in log and "epoch 1/2 step 2/2" in log


def test_tensorboard_mirror_holds_the_step_and_epoch_tables(local_run):
    _, run = local_run
    scalars = read_events(run / "tensorboard")
    steps = pq.read_table(run / "steps").to_pylist()
    got = dict(scalars["step/loss_e"])
    assert sorted(got) == [r["step"] for r in sorted(steps, key=lambda r: r["step"])] == [1, 2, 3, 4]
    for r in steps:
        assert got[r["step"]] == pytest.approx(r["loss_e"], rel=1e-6)
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    val = {r["step"]: r["psnr"] for r in epochs if r["split"] == "val"}
    assert dict(scalars["val/psnr"]) == pytest.approx(val)
    test = next(r for r in epochs if r["split"] == "test")
    assert scalars["test/psnr"] == [(test["step"], pytest.approx(test["psnr"], rel=1e-6))]
    assert [v for _, v in scalars["epoch"]] == [1.0, 2.0]


def test_figures_are_written(local_run):
    import matplotlib.image as mpimg

    _, run = local_run
    samples = mpimg.imread(run / "figures" / "samples.png")
    curves = mpimg.imread(run / "figures" / "curves.png")
    assert samples.shape[0] > samples.shape[1] * 0.7  # five rows of six images
    assert curves.shape[1] > curves.shape[0]  # two rows of three panels


def test_ray_train_console_is_quiet_and_its_log_is_full(tmp_path):
    proc = train("--workers", "1", "--out", str(tmp_path), "--name", "ray")
    assert proc.returncode == 0, proc.stderr[-4000:]
    # lines of other Ray instances on a shared machine (Ray's placement-group cleaner asks for the one address
    # and finds several) are not this run's output
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "PlacementGroupCleaner" not in ln]
    epoch_lines = [ln for ln in lines if "val psnr" in ln]
    assert len(epoch_lines) == 2, proc.stderr
    for noise in ("Checkpoint successfully created", "Reporting training result", "FutureWarning",
                  "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "Registered dataset logger"):
        assert noise not in proc.stderr, (noise, proc.stderr)
    shown = "\n".join(lines)
    first, second = (i for i, ln in enumerate(lines) if "val psnr" in ln)
    assert second - first <= 3, shown  # a handful of lines per epoch: here the epoch line and little else
    # no cap on the start-up lines: on a loaded machine Ray's controller may log a real warning (a timed-out
    # resource request, with its traceback) while it places the worker group, and warnings stay on the console
    assert "DEBUG" not in proc.stderr and " INFO ray" not in proc.stderr
    log = (tmp_path / "ray" / "log.txt").read_text()
    assert "Checkpoint successfully created" in log and "epoch 2/2  val psnr" in log

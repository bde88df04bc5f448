"""Crash leftovers, through real `gradprom train` processes: a run killed (kill -9) at an exact point, or stopped by
SIGTERM, then resumed with `gradprom train --resume`, ends identical to an uninterrupted run (test metrics, every
step row but its time, every epoch row, best.pt), with no temp file left behind.

The kill points come from tests/_crash.py (SIGKILL at step N, or in the middle of the N-th best.pt write). The
runs are tiny: 32 phantoms of 32x32, batch 8 -> 4 steps per epoch, 2 epochs, 2-level networks, one thread.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from gradprom.platform.recovery import repair_best
from gradprom.platform.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--device", "cpu", "--epochs", "2", "--seed", "3", "--set", "data.num_train=32", "--set", "data.num_val=8",
         "--set", "data.num_test=8", "--set", "data.image_size=32", "--set", "data.batch_size=8",
         "--set", "model.enhancer_channels=[4,8]", "--set", "model.recognizer_channels=[4,8]",
         "--set", "run.num_threads=1", "--set", "run.flush_seconds=0.001", "--set", "run.figures_every_epoch=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
TIMEOUT = 400


def start(*argv: str, crash: tuple[str, int] | None = None, log: Path) -> subprocess.Popen:
    head = [sys.executable, "-m", "tests._crash", crash[0], str(crash[1]), "--"] if crash else \
        [sys.executable, "-m", "gradprom.cli"]
    return subprocess.Popen([*head, *argv], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV, cwd=ROOT)


def steps(run: Path) -> list[dict]:
    t = RunDir(run).read_steps()
    return [{k: v for k, v in r.items() if k != "time"} for r in t.to_pylist()] if t is not None else []


def assert_same_run(a: Path, b: Path) -> None:
    """b (interrupted and resumed) equals a (uninterrupted), as reliability/cmp.py compares them."""
    ja, jb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert jb["status"] == "finished", jb
    assert ja["test"] == jb["test"]
    sa, sb = steps(a), steps(b)
    assert [r["step"] for r in sb] == list(range(1, len(sa) + 1)), "duplicated or missing step rows"
    assert sa == sb
    assert pq.read_table(a / "epochs.parquet").to_pylist() == pq.read_table(b / "epochs.parquet").to_pylist()
    for name in ("best.pt", "latest.pt"):
        ca, cb = (torch.load(d / "checkpoints" / name, weights_only=True) for d in (a, b))
        assert (ca["epoch"], ca["best"], ca["metrics"]) == (cb["epoch"], cb["best"], cb["metrics"]), name
        assert all(torch.equal(ca["enhancer"][k], cb["enhancer"][k]) for k in ca["enhancer"]), name
    left = [p.name for p in b.rglob("*.tmp")]
    assert not left, f"temp files left behind: {left}"


@dataclass
class Crashed:
    rc: int  # exit status of the interrupted process
    log: str
    before: dict  # what the crash left, looked at before the resume
    resumed: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, Crashed]]:
    """The uninterrupted run and three interrupted ones (started together), then the three resumes (together)."""
    root = tmp_path_factory.mktemp("crash")
    out = ["--out", str(root / "runs")]
    procs = {
        "base": start("train", *FLAGS, *out, "--name", "base", log=root / "base.log"),
        # killed at step 3 of the first epoch: step rows 1-2 on disk, no checkpoint yet
        "step": start("train", *FLAGS, *out, "--name", "step", crash=("step", 3), log=root / "step.log"),
        # killed in the middle of the second best.pt write (epoch 2, after epoch 1's latest.pt)
        "best": start("train", *FLAGS, *out, "--name", "best", crash=("best", 2), log=root / "best.log"),
        "term": start("train", *FLAGS, *out, "--name", "term", log=root / "term.log"),
    }
    term_steps = root / "runs" / "term" / "steps"
    deadline = time.monotonic() + TIMEOUT
    while procs["term"].poll() is None and not any(term_steps.glob("part-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    procs["term"].send_signal(signal.SIGTERM)  # after its first step, long before its last
    rcs = {k: p.wait(timeout=TIMEOUT) for k, p in procs.items()}
    logs = {k: (root / f"{k}.log").read_text() for k in procs}
    assert rcs["base"] == 0, logs["base"]

    runs = root / "runs"
    ck = runs / "best" / "checkpoints"
    before = {
        "step": {"steps": [r["step"] for r in steps(runs / "step")], "ckpts": list((runs / "step" / "checkpoints")
                                                                                  .glob("*.pt"))},
        "best": {"tmp": list(ck.glob(".best.pt.*.tmp")),
                 "bests": [torch.load(ck / f, weights_only=True)["best"] for f in ("latest.pt", "best.pt")
                           if (ck / f).is_file()]},
        "term": {"info": json.loads((runs / "term" / "run.json").read_text())},
    }
    # what other crashes leave: temp files of a step part and of a checkpoint
    (runs / "step" / "steps" / ".part-000000003-000000004.parquet.x1y2.tmp").write_bytes(b"PAR1 half")
    (runs / "step" / "checkpoints" / ".latest.pt.a1b2.tmp").write_bytes(b"PK half")
    resumes = {k: subprocess.Popen([sys.executable, "-m", "gradprom.cli", "train", "--resume", str(runs / k)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)
               for k in ("step", "best", "term")}
    done = {}
    for k, p in resumes.items():
        o, e = p.communicate(timeout=TIMEOUT)
        done[k] = Crashed(rcs[k], logs[k], before[k], subprocess.CompletedProcess(p.args, p.returncode, o, e))
    return runs, done


@pytest.mark.slow
def test_kill_before_the_first_checkpoint_resumes_without_duplicate_steps(runs):
    root, crashed = runs
    c = crashed["step"]
    assert c.rc == -signal.SIGKILL, c.log
    assert c.before["steps"] == [1, 2] and not c.before["ckpts"]
    assert c.resumed.returncode == 0, c.resumed.stderr[-3000:]
    assert_same_run(root / "base", root / "step")  # also: the planted temp files are gone


@pytest.mark.slow
def test_kill_during_the_best_checkpoint_write_resumes_to_the_best_epoch(runs):
    root, crashed = runs
    c = crashed["best"]
    assert c.rc == -signal.SIGKILL, c.log
    assert len(c.before["tmp"]) == 1  # the crash really was inside the write
    latest_best, best_best = c.before["bests"]
    assert latest_best == best_best  # best.pt is written first, so latest never claims an unsaved best
    assert c.resumed.returncode == 0, c.resumed.stderr[-3000:]
    assert_same_run(root / "base", root / "best")
    val = [r for r in pq.read_table(root / "base" / "epochs.parquet").to_pylist() if r["split"] == "val"]
    best_epoch = max(val, key=lambda r: r["psnr"])["epoch"]  # run.monitor defaults to psnr
    assert torch.load(root / "best" / "checkpoints" / "best.pt", weights_only=True)["epoch"] == best_epoch


@pytest.mark.slow
def test_sigterm_marks_the_run_stopped_and_it_resumes(runs):
    root, crashed = runs
    c = crashed["term"]
    assert c.rc == 143, c.log
    assert "Traceback" not in c.log and "gradprom: terminated (SIGTERM)" in c.log
    info = c.before["info"]
    assert info["status"] == "stopped" and info["end"], info
    assert "SIGTERM" in info["error"] and f"gradprom train --resume {root / 'term'}" in info["error"]
    assert c.resumed.returncode == 0, c.resumed.stderr[-3000:]
    assert_same_run(root / "base", root / "term")


# ---- best.pt of a run written by an older version (latest.pt first): repaired on resume ----------------------
def _state(epoch: int, score: float, best: float) -> dict:
    return {"enhancer": {"w": torch.full((2,), float(epoch))}, "epoch": epoch, "best": best,
            "metrics": {"psnr": score}}


def _score(val: dict) -> float:
    return val.get("psnr", -math.inf)


def test_missing_best_is_restored_from_latest_when_latest_is_the_best(tmp_path):
    run = RunDir(tmp_path / "r")
    run.create()
    state = _state(2, 25.0, 25.0)  # epoch 2 is the best so far, and best.pt died while it was written
    torch.save(state, run.latest_checkpoint())
    assert repair_best(run, state, _score) == 25.0
    best = torch.load(run.best_checkpoint(), weights_only=True)
    assert best["epoch"] == 2 and torch.equal(best["enhancer"]["w"], state["enhancer"]["w"])


def test_stale_best_lowers_the_best_score_so_the_next_better_epoch_replaces_it(tmp_path, caplog):
    run = RunDir(tmp_path / "r")
    run.create()
    torch.save(_state(0, 20.0, 20.0), run.best_checkpoint())  # best.pt still holds epoch 0
    state = _state(2, 22.0, 24.0)  # latest claims epoch 1's 24.0, whose weights were never saved
    torch.save(state, run.latest_checkpoint())
    before = run.best_checkpoint().read_bytes()
    assert repair_best(run, state, _score) == 20.0
    assert run.best_checkpoint().read_bytes() == before
    assert "whose weights were not saved" in caplog.text


def test_a_consistent_or_ahead_best_is_left_alone(tmp_path):
    run = RunDir(tmp_path / "r")
    run.create()
    torch.save(_state(1, 24.0, 24.0), run.best_checkpoint())
    before = run.best_checkpoint().read_bytes()
    assert repair_best(run, _state(1, 24.0, 24.0), _score) == 24.0  # consistent
    assert repair_best(run, _state(0, 20.0, 20.0), _score) == 20.0  # ahead: the replayed epoch rewrites it
    assert run.best_checkpoint().read_bytes() == before

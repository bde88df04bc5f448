"""Faults: 4 hospitals under FedProx, `min_answers: 2`; hospital-3 has no data file at all; hospitals 1 and 2
crash in round 2 (one usable reply: the global model is kept), both rejoin; hospital-2 sends NaN weights in
round 3 (rejected, the other two are averaged). The federation is stopped with Ctrl-C after a round and
resumed with --resume."""

from __future__ import annotations

import math
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from gradprom.platform.checkpoint import load_checkpoint
from gradprom.platform.rundir import RunDir

from ._fed import run_cli, start_cli, stop_group, tiny

pytestmark = pytest.mark.slow
ROUNDS = 4


def _wait_for_checkpoint(run: RunDir, proc, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if run.latest_checkpoint().is_file() or proc.poll() is not None:
            return
        time.sleep(0.1)
    raise AssertionError(f"no checkpoint after {timeout} s: {proc.log_path.read_text()[-2000:]}")


def test_crash_nan_and_missing_data_are_recorded_and_a_stopped_federation_resumes(tmp_path):
    missing = tmp_path / "nowhere" / "hospital-3.npz"
    cfg = tiny(tmp_path / "runs", "faults", hospitals=4, rounds=ROUNDS, min_answers=2, strategy="fedprox",
               proximal_mu=0.1, sites={3: {"data": str(missing)}},
               faults=[{"site": 1, "round": 2, "kind": "crash"}, {"site": 2, "round": 2, "kind": "crash"},
                       {"site": 2, "round": 3, "kind": "nan"}])
    (tmp_path / "faults.yaml").write_text(yaml.safe_dump(cfg))
    run = RunDir(tmp_path / "runs" / "faults")

    # --- start, then Ctrl-C once the first round is checkpointed ----------------------------------------
    proc = start_cli(["federate", "--config", str(tmp_path / "faults.yaml")], tmp_path, "first")
    try:
        _wait_for_checkpoint(run, proc)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        stop_group(proc)
    first = proc.log_path.read_text()
    assert rc == 130, first[-3000:]
    assert "Traceback" not in first
    info = run.read_run()
    done = load_checkpoint(run.latest_checkpoint())["round"]
    assert info["status"] == "stopped" and "--resume" in info["error"] and 1 <= done < ROUNDS

    # --- resume to the end ------------------------------------------------------------------------------
    rc, out = run_cli(["federate", "--resume", str(run.path)], tmp_path, "resume")
    assert rc == 0, out[-3000:]
    assert f"resuming {run.path} after round {done}" in out
    rows = pq.read_table(run.path / "rounds.parquet").to_pylist()
    by = {(r["round"], r["site"]): r for r in rows}
    assert len(by) == len(rows) == ROUNDS * 5  # every round x (4 sites + global) exactly once
    for n in range(1, ROUNDS + 1):
        miss = by[(n, "hospital-3")]
        assert miss["status"] == "failed" and "hospital-3" in miss["error"] and str(missing) in miss["error"]
        assert by[(n, "hospital-0")]["status"] == "ok"
        assert by[(n, "global")]["status"] == ("failed" if n == 2 else "ok")
    for site in ("hospital-1", "hospital-2"):
        crash = by[(2, site)]
        assert crash["status"] == "failed" and "injected crash" in crash["error"] and crash["psnr"] is None
    assert [by[(n, "hospital-1")]["status"] for n in (1, 3, 4)] == ["ok", "ok", "ok"]  # it rejoined
    assert by[(4, "hospital-2")]["status"] == "ok"
    # round 2: one usable reply, two needed -> the global model was kept (same held-out metrics as round 1)
    kept = by[(2, "global")]
    assert kept["num_examples"] == 0 and "min_answers" in kept["error"]
    val = {r["epoch"]: r for r in run.read_epochs() if r["split"] == "val"}
    assert val[2]["psnr"] == val[1]["psnr"] and val[2]["ssim"] == val[1]["ssim"]
    assert val[3]["psnr"] != val[2]["psnr"]
    nan = by[(3, "hospital-2")]
    assert nan["status"] == "rejected" and "non-finite" in nan["error"]
    # the global model of round 3 averaged only the two sites whose weights were accepted
    assert by[(3, "global")]["num_examples"] == by[(3, "hospital-0")]["num_examples"] + \
        by[(3, "hospital-1")]["num_examples"]
    state = load_checkpoint(run.latest_checkpoint())
    assert state["round"] == ROUNDS
    assert all(torch.isfinite(t).all() for t in state["enhancer"].values() if t.is_floating_point())
    assert math.isfinite(by[(ROUNDS, "global")]["psnr"])
    info = run.read_run()
    assert info["status"] == "finished" and info["error"] is None
    assert [r["epoch"] for r in run.read_epochs() if r["split"] == "val"] == list(range(1, ROUNDS + 1))
    sites = pq.read_table(run.path / "sites.parquet").to_pylist()
    assert "hospital-3" in sites[3]["error"] and sites[0]["error"] is None

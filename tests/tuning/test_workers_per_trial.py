"""Tune trials that each train on 2 Ray Train workers (`gradprom tune --workers-per-trial 2`), on a private local
Ray instance: 2 trials x 1 epoch of the tiny search, one trial at a time (1 CPU for the trial, 2 for its workers,
1 spare for Ray Data)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from gradprom.cli import main
from gradprom.platform.distributed.worker_status import read_statuses
from gradprom.platform.rundir import RunDir

from ._tiny import write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_each_trial_trains_on_two_ray_train_workers(ray_local, tmp_path):
    cfg = write_config(tmp_path / "tune.yaml", num_trials=2, max_epochs=1, grace_period=1)
    assert main(["tune", "--config", str(cfg), "--out", str(tmp_path), "--name", "w2",
                 "--workers-per-trial", "2"]) == 0
    exp = tmp_path / "w2"
    info = json.loads((exp / "run.json").read_text())
    assert info["status"] == "finished" and info["workers_per_trial"] == 2
    rows = pq.read_table(exp / "trials.parquet").to_pylist()
    trials = sorted({r["trial_id"] for r in rows})
    assert len(trials) == 2 and len(rows) == 2  # one epoch each
    for tid in trials:
        run = RunDir(exp / "trials" / tid)
        meta = run.read_run()
        assert (meta["kind"], meta["status"], meta["workers"]) == ("ray-train", "finished", 2)
        train = [r for r in run.read_epochs() if r["split"] == "train"]
        assert [r["workers"] for r in train] == [2] and train[0]["gate_mismatches"] == 0
        workers = read_statuses(run.path)
        assert sorted(workers) == [0, 1] and workers[0]["pid"] != workers[1]["pid"]
        val = [r for r in run.read_epochs() if r["split"] == "val"]
        assert [round(r["psnr"], 6) for r in rows if r["trial_id"] == tid] == [round(val[0]["psnr"], 6)]

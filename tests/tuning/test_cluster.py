"""A real cluster path: `ray start --head` on 127.0.0.1 (free ports, its own temp dir), the tuning job sent with
`ray job submit --working-dir <repo>`, its results read back; only the test's own head is stopped. The job's
trials train on a Ray Train worker each (`--workers-per-trial 1`), so the Train-in-Tune path (the trial
launches the Ray Train runner, TuneReportCallback forwards its reports) runs on the cluster too."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from .._ray_head import SLOW_START_ENV, cleanup, head_args, short_temp_dir
from ._tiny import BIN, env, free_port, write_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_ray_job_submit_runs_a_tuning_job(tmp_path):
    cfg = write_config(tmp_path / "tune.yaml", num_trials=2, max_concurrent=2)
    temp = short_temp_dir()
    gcs, dash = free_port(), free_port()
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen([str(BIN / "ray"), "start", "--block", *head_args(temp, gcs, dash, num_cpus=4)],
                            env={**env(), **SLOW_START_ENV},
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        from ray.job_submission import JobSubmissionClient

        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 180
        while True:  # the Jobs API answers once the dashboard is up
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            try:
                JobSubmissionClient(url).list_jobs()
                break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.monotonic() < deadline, "the Ray head did not come up"
                time.sleep(1)
        out = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO),
             "--submission-id", "gradprom-tune-test", "--",
             str(BIN / "gradprom"), "tune", "--config", str(cfg), "--out", str(tmp_path), "--name", "job",
             "--address", "auto", "--workers-per-trial", "1"],
            env=env(), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert JobSubmissionClient(url).get_job_status("gradprom-tune-test").value == "SUCCEEDED"
        logs = JobSubmissionClient(url).get_job_logs("gradprom-tune-test")
        assert f"tuning experiment: {tmp_path / 'job'}" in logs and "2 trials finished" in logs
    finally:
        head.terminate()
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        cleanup(temp)
        log.close()
    # --- the results the job wrote -----------------------------------------------------------------------
    exp = tmp_path / "job"
    info = json.loads((exp / "run.json").read_text())
    assert info["status"] == "finished" and info["address"] == "auto"
    rows = pq.read_table(exp / "trials.parquet").to_pylist()
    trials = {r["trial_id"] for r in rows}
    assert len(trials) == 2 and (exp / "best" / "best.yaml").is_file()
    for tid in trials:  # each trial is a Ray Train run whose every epoch reached Tune
        mine = sorted((r for r in rows if r["trial_id"] == tid), key=lambda r: r["epoch"])
        run = json.loads((exp / "trials" / tid / "run.json").read_text())
        assert run["kind"] == "ray-train" and run["workers"] == 1
        assert run["status"] == ("stopped" if mine[0]["stopped_early"] else "finished")
        val = [r for r in pq.read_table(exp / "trials" / tid / "epochs.parquet").to_pylist() if r["split"] == "val"]
        assert [round(r["psnr"], 6) for r in mine] == [round(v["psnr"], 6) for v in val][:len(mine)]
        assert len(mine) == (1 if mine[0]["stopped_early"] else 2)

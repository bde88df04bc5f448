"""Resume: `gradprom tune` interrupted with Ctrl-C (SIGINT) after some trials, then `gradprom tune --resume DIR`:
the requested number of trials in the end, and no finished trial runs again."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from ._tiny import BIN, env, write_config

pytestmark = pytest.mark.slow


def statuses(exp) -> dict[str, str]:
    p = exp / "trial_status.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:  # never half-written (atomic), but be safe while polling
        return {}


def test_interrupt_then_resume(tmp_path):
    cfg = write_config(tmp_path / "tune.yaml", num_trials=6, max_concurrent=1)
    exp = tmp_path / "exp"
    log = (tmp_path / "first.log").open("w")
    p = subprocess.Popen([str(BIN / "gradprom"), "tune", "--config", str(cfg), "--out", str(tmp_path), "--name", "exp",
                          "--num-cpus", "2"], env=env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 400
        while sum(s == "TERMINATED" for s in statuses(exp).values()) < 2:
            assert p.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "two trials did not finish in time"
            time.sleep(0.5)
        p.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert p.wait(timeout=180) == 130, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()
    first = json.loads((exp / "run.json").read_text())
    assert first["status"] == "stopped" and "--resume" in first["error"]
    before = {t for t, s in statuses(exp).items() if s == "TERMINATED"}
    assert 2 <= len(before) < 6
    starts = {t: json.loads((exp / "trials" / t / "run.json").read_text())["start"] for t in before}
    rows_before = {t: [r for r in pq.read_table(exp / "trials.parquet").to_pylist() if r["trial_id"] == t]
                   for t in before}

    out = subprocess.run([str(BIN / "gradprom"), "tune", "--resume", str(exp), "--num-cpus", "2"], env=env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads((exp / "run.json").read_text())
    assert info["status"] == "finished" and info["trials_finished"] == 6
    rows = pq.read_table(exp / "trials.parquet").to_pylist()
    ids = {r["trial_id"] for r in rows}
    assert len(ids) == 6 and {r["status"] for r in rows} == {"TERMINATED"}
    assert sorted(p.name for p in (exp / "trials").iterdir()) == sorted(ids)
    keys = [(r["trial_id"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)), "an epoch of a trial was reported twice"
    for t in before:  # finished trials were kept, not run again
        assert json.loads((exp / "trials" / t / "run.json").read_text())["start"] == starts[t]
        again = [r for r in rows if r["trial_id"] == t]
        assert [(r["epoch"], r["psnr"]) for r in again] == [(r["epoch"], r["psnr"]) for r in rows_before[t]]

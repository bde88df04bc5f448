"""Resume, safely: `gradprom tune` (default verbosity) interrupted with Ctrl-C (SIGINT) after some trials; every
pickle Ray left in the experiment directory is replaced by one whose `__reduce__` touches a marker file; then
`gradprom -v tune --resume DIR`. One search, shared by the tests below:

- the marker never appears (nothing in the directory is unpickled), although the planted files are live;
- the requested number of trials in the end, no finished trial runs again, no duplicate (trial, epoch) rows;
- the Optuna study opens with `optuna.load_study` after the first run and after the resume;
- the console: a handful of lines per trial by default, the libraries' logs back with `-v`.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from ._tiny import BIN, env, write_config

pytestmark = pytest.mark.slow
NUM_TRIALS = 6
TRIAL_PICKLE_FIELDS = ("results", "extra_arg", "placement_group_factory", "_resources",
                       "_default_placement_group_factory")  # hex cloudpickles in experiment_state-*.json


class Planted:
    """A pickle that runs a command when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def statuses(exp: Path) -> dict[str, str]:
    p = exp / "trial_status.json"
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:  # never half-written (atomic), but be safe while polling
        return {}


def plant(exp: Path, payload: bytes) -> list[Path]:
    """Replace every pickle of Ray's state (and of its trial folders) with `payload`; returns the files."""
    ray_dir = exp / "tune"
    files = [*ray_dir.glob("*.pkl"), *ray_dir.glob("search_gen_state-*.json"), *ray_dir.glob("run_trial_*/*.pkl")]
    for f in files:
        f.write_bytes(payload)
    for f in ray_dir.glob("experiment_state-*.json"):
        state = json.loads(f.read_text())
        for entry in state["trial_data"]:
            trial = json.loads(entry[0])
            for key in TRIAL_PICKLE_FIELDS:
                if key in trial:
                    trial[key] = payload.hex()
            entry[0] = json.dumps(trial)
        f.write_text(json.dumps(state))
        files.append(f)
    return files


def load_study(exp: Path):
    import optuna

    info = json.loads((exp / "run.json").read_text())
    return optuna.load_study(study_name=info["optuna_study"], storage=info["optuna_storage"])


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    cfg = write_config(tmp / "tune.yaml", num_trials=NUM_TRIALS, max_concurrent=1)
    exp = tmp / "exp"
    first_log = tmp / "first.log"
    with first_log.open("w") as log:
        p = subprocess.Popen([str(BIN / "gradprom"), "tune", "--config", str(cfg), "--out", str(tmp), "--name",
                              "exp", "--num-cpus", "2"], env=env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 400
            while sum(s == "TERMINATED" for s in statuses(exp).values()) < 2:
                assert p.poll() is None, first_log.read_text()[-3000:]
                assert time.monotonic() < deadline, "two trials did not finish in time"
                time.sleep(0.5)
            p.send_signal(signal.SIGINT)  # what Ctrl-C sends
            assert p.wait(timeout=180) == 130, first_log.read_text()[-3000:]
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    before = {t for t, s in statuses(exp).items() if s == "TERMINATED"}
    s = SimpleNamespace(tmp=tmp, exp=exp, first_out=first_log.read_text(), first_run=json.loads(
        (exp / "run.json").read_text()), before=before, statuses_before=statuses(exp))
    s.starts = {t: json.loads((exp / "trials" / t / "run.json").read_text())["start"] for t in before}
    s.rows_before = pq.read_table(exp / "trials.parquet").to_pylist()
    study = load_study(exp)
    s.study_before = [(t.state.name, t.user_attrs.get("ray_trial_id"), t.params) for t in study.trials]

    s.marker = tmp / "MARK_TUNE"
    s.payload = pickle.dumps(Planted(s.marker))
    s.planted = plant(exp, s.payload)
    s.resume = subprocess.run([str(BIN / "gradprom"), "-v", "tune", "--resume", str(exp), "--num-cpus", "2"],
                              env=env(), capture_output=True, text=True, timeout=600)
    return s


def test_planted_pickles_do_not_run_on_resume(search):
    assert search.resume.returncode == 0, search.resume.stderr[-3000:]
    names = {p.name for p in search.planted}
    assert "tuner.pkl" in names and any(n.startswith("search_gen_state-") for n in names)
    assert any(n.startswith("experiment_state-") for n in names) and any(n == "params.pkl" for n in names)
    assert not search.marker.exists(), "resuming ran code planted in the experiment directory"
    pickle.loads(search.payload)  # the planted payload is live: loading it once does touch the marker
    assert search.marker.exists()
    search.marker.unlink()
    assert "Tuner.restore" not in search.resume.stdout + search.resume.stderr


def test_interrupt_then_resume_to_completion(search):
    exp = search.exp
    assert search.first_run["status"] == "stopped" and "--resume" in search.first_run["error"]
    assert 2 <= len(search.before) < NUM_TRIALS
    assert search.resume.returncode == 0, search.resume.stderr[-3000:]
    info = json.loads((exp / "run.json").read_text())
    assert info["status"] == "finished" and info["trials_finished"] == NUM_TRIALS
    rows = pq.read_table(exp / "trials.parquet").to_pylist()
    ids = {r["trial_id"] for r in rows}
    assert len(ids) == NUM_TRIALS and {r["status"] for r in rows} == {"TERMINATED"}
    assert sorted(p.name for p in (exp / "trials").iterdir()) == sorted(ids)
    keys = [(r["trial_id"], r["epoch"]) for r in rows]
    assert len(keys) == len(set(keys)), "an epoch of a trial was reported twice"
    for t in search.before:  # finished trials were kept, not run again
        assert json.loads((exp / "trials" / t / "run.json").read_text())["start"] == search.starts[t]
        again = [(r["epoch"], r["psnr"]) for r in rows if r["trial_id"] == t]
        assert again == [(r["epoch"], r["psnr"]) for r in search.rows_before if r["trial_id"] == t]
    for t, rs in {t: [r for r in rows if r["trial_id"] == t] for t in ids}.items():  # each trial: epochs 0..n-1
        assert sorted(r["epoch"] for r in rs) == list(range(len(rs))), t


def test_optuna_study_opens_after_search_and_after_resume(search):
    exp = search.exp
    # after the interrupted search: the finished trials are closed in the study, under their Tune trial ids
    closed = {tid for state, tid, _ in search.study_before if state in ("COMPLETE", "PRUNED")}
    assert search.before <= closed
    assert search.first_run["optuna_storage"] == f"sqlite:///{exp.resolve() / 'optuna.db'}"
    # after the resume: every trial of trials.parquet is in the study, COMPLETE when it ran all its epochs and
    # PRUNED when ASHA stopped it; the trials the interruption cut short are FAIL, their points evaluated again
    study = load_study(exp)
    rows = pq.read_table(exp / "trials.parquet").to_pylist()
    finals = {}
    for r in rows:
        if r["training_iteration"] >= finals.get(r["trial_id"], {}).get("training_iteration", 0):
            finals[r["trial_id"]] = r
    by_ray = {t.user_attrs.get("ray_trial_id"): t for t in study.trials}
    assert set(finals) <= set(by_ray)
    for tid, r in finals.items():
        t = by_ray[tid]
        assert t.state.name == ("PRUNED" if r["stopped_early"] else "COMPLETE"), (tid, t.state)
        assert t.value == pytest.approx(r["psnr"])  # PRUNED: its last epoch's value
    assert any(r["stopped_early"] for r in finals.values()), "ASHA stopped no trial"
    interrupted = [t for t in study.trials if t.state.name == "FAIL"]
    assert all(t.user_attrs.get("ray_trial_id") not in finals for t in interrupted)
    retried = [t for t in study.trials if "retry_of" in t.user_attrs]
    assert len(retried) == len(interrupted)
    for t in retried:
        assert t.params == study.trials[t.user_attrs["retry_of"]].params


def test_quiet_by_default_and_loud_with_v(search):
    out, exp = search.first_out, search.exp
    started = len(search.statuses_before)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) <= 6 + 2 * started, out  # GradProm's own line per trial plus a few for the experiment
    assert sum("gradprom.tuning.callback: trial" in ln for ln in lines) >= len(search.before)
    # Ray's boxes, Optuna's INFO line, Ray's start-up warning, its unsafe resume advice, its temporary folder
    for noise in ("╭", "Trial status", "A new study created", "FutureWarning", "Tuner.restore", "/session_"):
        assert noise not in out, (noise, out)
    assert f"tensorboard --logdir {exp.resolve() / 'tune'}" in out
    assert list((exp / "tune").glob("run_trial_*/events.out.tfevents.*")), "no durable TensorBoard files"
    loud = search.resume.stdout + search.resume.stderr  # the resume ran with -v: Ray's and Optuna's logs are back
    assert "╭" in loud and "Trial status" in loud
    assert "Using an existing study" in loud

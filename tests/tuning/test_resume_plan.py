"""The resume plan without Ray: which trials a resume keeps (both records say ended), what it drops from disk,
which points it evaluates again; ASHA's rungs refilled from kept rows; an experiment without a study refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pyarrow.parquet as pq
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from gradprom.cli import main
from gradprom.platform.config import build_config
from gradprom.platform.errors import DataError
from gradprom.platform.rundir import write_parquet
from gradprom.tuning import job
from gradprom.tuning.resume import plan_resume, prime_asha
from gradprom.tuning.space import build_spec
from gradprom.tuning.study import open_storage

from ._tiny import tiny_base

DIST = {"tau": FloatDistribution(0.0, 0.5)}


def rows(tid: str, values: list[float], status: str = "TERMINATED") -> list[dict]:
    return [{"trial_id": tid, "status": status, "epoch": i, "training_iteration": i + 1, "psnr": v,
             "stopped_early": False} for i, v in enumerate(values)]


@pytest.fixture
def interrupted(tmp_path):
    """An experiment directory as an interruption leaves it: a, b ended; c was running; d ended in Ray's view
    but the searcher never closed it (its Optuna trial is RUNNING)."""
    storage = open_storage(tmp_path)
    study = optuna.create_study(study_name="exp", storage=storage, direction="maximize")
    for tid, state, value, tau in (("a", TrialState.COMPLETE, 21.0, 0.1), ("b", TrialState.PRUNED, None, 0.2)):
        study.add_trial(create_trial(state=state, value=value, params={"tau": tau}, distributions=DIST,
                                     user_attrs={"ray_trial_id": tid}))
    running = {}
    for tid in ("c", "d"):  # what OptunaSearch.suggest does
        t = study.ask(fixed_distributions=DIST)
        t.set_user_attr("ray_trial_id", tid)
        running[tid] = t.params["tau"]
    (tmp_path / "trial_status.json").write_text(json.dumps({"a": "TERMINATED", "b": "TERMINATED",
                                                            "c": "RUNNING", "d": "TERMINATED"}))
    write_parquet(tmp_path / "trials.parquet", rows("a", [20.0, 21.0]) + rows("b", [19.0]) + rows("c", [20.5])
                  + rows("d", [20.1, 20.2]))
    for tid in "abcd":
        (tmp_path / "trials" / tid).mkdir(parents=True)
        (tmp_path / "tune" / f"run_trial_{tid}_1_tau=0.1_2026-01-01").mkdir(parents=True)
    return tmp_path, storage, running


def test_plan_keeps_only_trials_both_records_close(interrupted):
    exp, storage, running = interrupted
    plan = plan_resume(exp, 6, "exp", storage, "tune")
    assert plan.kept == {"a": "TERMINATED", "b": "TERMINATED"}
    assert plan.remaining == 4 and plan.requeued == 2
    assert sorted(p.name for p in (exp / "trials").iterdir()) == ["a", "b"]
    assert sorted(p.name.split("_")[2] for p in (exp / "tune").iterdir()) == ["a", "b"]
    assert {r["trial_id"] for r in pq.read_table(exp / "trials.parquet").to_pylist()} == {"a", "b"}
    assert json.loads((exp / "trial_status.json").read_text()) == plan.kept
    study = optuna.load_study(study_name="exp", storage=storage)
    states = {t.user_attrs.get("ray_trial_id"): t.state for t in study.trials if "ray_trial_id" in t.user_attrs}
    assert states == {"a": TrialState.COMPLETE, "b": TrialState.PRUNED, "c": TrialState.FAIL, "d": TrialState.FAIL}
    # c's and d's points come first in the new search (OptunaSearch asks the study like this)
    asked = [study.ask(fixed_distributions=DIST) for _ in running]
    assert sorted(t.params["tau"] for t in asked) == sorted(running.values())
    assert all(t.user_attrs["retry_of"] in (2, 3) for t in asked)


def test_plan_refuses_trials_without_a_study(tmp_path):
    (tmp_path / "trial_status.json").write_text(json.dumps({"a": "TERMINATED"}))
    with pytest.raises(DataError, match="no Optuna study 'exp'.*pickle"):
        plan_resume(tmp_path, 4, "exp", open_storage(tmp_path), "tune")


def test_asha_rungs_refilled_from_kept_rows():
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    def scheduler():
        return ASHAScheduler(time_attr="training_iteration", metric="psnr", mode="max", max_t=2, grace_period=1,
                             reduction_factor=2, stop_last_trials=False)

    kept = rows("a", [20.0, 21.0]) + rows("b", [22.0, 23.0])
    result = {"training_iteration": 1, "psnr": 19.0}  # worse than both kept trials at epoch 1
    fresh, primed = scheduler(), scheduler()
    prime_asha(primed, kept, "psnr")
    for s in (fresh, primed):
        s.on_trial_add(None, SimpleNamespace(trial_id="new"))
    assert fresh.on_trial_result(None, SimpleNamespace(trial_id="new"), result) == TrialScheduler.CONTINUE
    assert primed.on_trial_result(None, SimpleNamespace(trial_id="new"), result) == TrialScheduler.STOP


def test_resume_of_an_experiment_without_a_study_is_refused(tmp_path, capsys):
    raw = tiny_base()
    exp = job.prepare(build_config(raw), build_spec({"num_trials": 2, "max_epochs": 1}), tmp_path, "old")
    info = json.loads((exp / "run.json").read_text())
    del info["optuna_study"], info["optuna_storage"]  # as an experiment of an earlier GradProm
    (exp / "run.json").write_text(json.dumps(info))
    assert main(["tune", "--resume", str(exp)]) == 2
    err = capsys.readouterr().err
    assert "names no Optuna study" in err and "pickle" in err and "Traceback" not in err
    assert not (exp / "tune").exists()  # refused before Ray started

"""End to end on one private local Ray instance (started once for the module): a single-objective search with
ASHA, its trials table, the exported best config trained with `gradprom train`; a multi-objective search whose
Pareto front holds no dominated trial; `gradprom tune report`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import yaml

from gradprom.cli import main
from gradprom.platform.config import build_config, load_config_file

from ._tiny import BIN, env, write_config

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def rows_by_trial(exp: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in pq.read_table(exp / "trials.parquet").to_pylist():
        out.setdefault(r["trial_id"], []).append(r)
    return {k: sorted(v, key=lambda r: r["epoch"]) for k, v in out.items()}


def test_single_objective_search(ray_local, tmp_path):
    cfg = write_config(tmp_path / "tune.yaml", num_trials=4)
    assert main(["tune", "--config", str(cfg), "--out", str(tmp_path), "--name", "single"]) == 0
    exp = tmp_path / "single"
    info = json.loads((exp / "run.json").read_text())
    assert (info["kind"], info["status"], info["metrics"], info["mode"]) == ("tune", "finished", ["psnr"], "max")

    # --- one row per trial x epoch, in step with each trial's own run directory ------------------------------
    trials = rows_by_trial(exp)
    assert len(trials) == 4
    for tid, rows in trials.items():
        assert [r["epoch"] for r in rows] == list(range(len(rows)))
        assert [r["training_iteration"] for r in rows] == [e + 1 for e in range(len(rows))]
        assert {r["status"] for r in rows} == {"TERMINATED"}
        assert len(rows) == (1 if rows[0]["stopped_early"] else 2)
        run = exp / "trials" / tid
        val = [r for r in pq.read_table(run / "epochs.parquet").to_pylist() if r["split"] == "val"]
        assert [round(v["psnr"], 6) for v in val] == [round(r["psnr"], 6) for r in rows]
        status = json.loads((run / "run.json").read_text())["status"]
        assert status == ("stopped" if rows[0]["stopped_early"] else "finished")
        c = rows[0]
        assert 0.0 <= c["config/tau"] <= 0.5 and 0.5 <= c["config/lambda_e"] <= 2.0
        assert 0.01 <= c["config/lambda_r"] <= 1.0 and 1e-4 <= c["config/lr"] <= 1e-2
    stopped = [t for t, rows in trials.items() if rows[0]["stopped_early"]]
    assert stopped, "ASHA stopped no trial"
    assert info["trials_stopped_early"] == len(stopped)
    # the paper's defaults are evaluated (points_to_evaluate)
    firsts = [rows[0] for rows in trials.values()]
    assert any((r["config/tau"], r["config/lambda_e"], r["config/lambda_r"], r["config/lr"]) == (0.0, 1.0, 0.1, 1e-3)
               for r in firsts)

    # --- the best config: the best of the trials that ran all epochs, and it trains ---------------------------
    full = {t: rows[-1] for t, rows in trials.items() if not rows[0]["stopped_early"]}
    best_id = max(full, key=lambda t: full[t]["psnr"])
    assert info["best_trial"] == best_id

    # --- the Optuna study in <exp>/optuna.db: opened with Optuna's own API, one trial per Tune trial ----------
    study = optuna.load_study(study_name=info["optuna_study"], storage=info["optuna_storage"])
    assert info["optuna_storage"] == f"sqlite:///{exp.resolve() / 'optuna.db'}"
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert set(by_ray) == set(trials)
    for tid, rows in trials.items():  # ASHA-stopped: PRUNED with the last epoch's value
        assert by_ray[tid].state.name == ("PRUNED" if rows[0]["stopped_early"] else "COMPLETE")
        assert by_ray[tid].value == pytest.approx(rows[-1]["psnr"])
        assert by_ray[tid].params["tau"] == pytest.approx(rows[0]["config/tau"])
    assert study.best_trial.user_attrs["ray_trial_id"] == best_id  # Optuna's best: among COMPLETE trials

    best_yaml = exp / "best" / "best.yaml"
    best = build_config(load_config_file(best_yaml))
    assert best.gradprom.tau == pytest.approx(full[best_id]["config/tau"])
    assert best.optim.lr == pytest.approx(full[best_id]["config/lr"])
    assert best.optim.epochs == 2 and "tune" not in yaml.safe_load(best_yaml.read_text())
    out = subprocess.run([str(BIN / "gradprom"), "train", "--config", str(best_yaml), "--out", str(tmp_path),
                          "--name", "from-best"], env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    run = json.loads((tmp_path / "from-best" / "run.json").read_text())
    assert run["status"] == "finished" and run["tau"] == pytest.approx(best.gradprom.tau)


def dominated(a: dict, b: dict, metrics: list[str]) -> bool:
    """b dominates a (all objectives maximised here)."""
    return all(b[m] >= a[m] for m in metrics) and any(b[m] > a[m] for m in metrics)


def test_multi_objective_pareto_front_and_report(ray_local, tmp_path, capsys):
    cfg = write_config(tmp_path / "tune.yaml", num_trials=4, max_concurrent=2)
    assert main(["tune", "--config", str(cfg), "--objective", "pareto", "--out", str(tmp_path), "--name", "mo"]) == 0
    exp = tmp_path / "mo"
    info = json.loads((exp / "run.json").read_text())
    metrics = info["metrics"]
    assert metrics == ["psnr", "accuracy"] and info["modes"] == ["max", "max"]

    trials = rows_by_trial(exp)
    assert len(trials) == 4
    finals = [rows[-1] for rows in trials.values() if not rows[0]["stopped_early"]]
    front = pq.read_table(exp / "pareto.parquet").to_pylist()
    assert front
    for f in front:  # no trial of the search dominates a member of the front
        assert not any(dominated(f, t, metrics) for t in finals), f
    non_dominated = {t["trial_id"] for t in finals if not any(dominated(t, o, metrics) for o in finals)}
    assert {f["trial_id"] for f in front} == non_dominated
    study = optuna.load_study(study_name=info["optuna_study"], storage=info["optuna_storage"])
    assert len(study.directions) == 2 and {t.user_attrs["ray_trial_id"] for t in study.trials} == set(trials)
    for t in study.trials:  # several objectives: the final values of the trials that ran all epochs
        rows = trials[t.user_attrs["ray_trial_id"]]
        if not rows[0]["stopped_early"]:
            assert t.state.name == "COMPLETE" and t.values == pytest.approx([rows[-1][m] for m in metrics])
        else:
            assert t.state.name == "PRUNED"
    for f in front:
        cfg_f = build_config(load_config_file(exp / "best" / f"pareto-{f['trial_id']}.yaml"))
        assert cfg_f.gradprom.tau == pytest.approx(f["config/tau"])

    # --- gradprom tune report: the top trials and the plots ---------------------------------------------------
    capsys.readouterr()
    assert main(["tune", "report", str(exp), "--top", "3"]) == 0
    text = capsys.readouterr().out
    best_psnr = max(finals, key=lambda r: r["psnr"])["trial_id"]
    assert best_psnr in text.splitlines()[2 + 1]  # the first listed trial is the best by the first objective
    for name in ("objective.png", "tau.png", "pareto.png"):
        assert (exp / "report" / name).read_bytes()[:8] == PNG

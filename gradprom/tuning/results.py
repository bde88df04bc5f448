"""An experiment's tables and exports: trials.parquet, pareto.parquet and the ready-to-use configs in best/.

trials.parquet has one row per trial x epoch (the tables contract): trial_id, status, epoch, training_iteration,
config/<name> of every searched value, the reported metrics and stopped_early (ASHA stopped it before
max_epochs). The best trial and the Pareto front are chosen among the trials that ran all their epochs (a
trial that ASHA stopped reports an earlier epoch's numbers, which are not comparable); when there are none,
among all finished trials.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from gradprom.platform.atomic import atomic_write_text
from gradprom.platform.config import build_config, save_config
from gradprom.platform.rundir import write_parquet

from .space import apply_params

METRICS = ["psnr", "ssim", "accuracy", "auc", "dice", "task", "loss_e", "loss_r", "gate_open_rate", "mean_cos"]
STATUSES = ("RUNNING", "TERMINATED", "ERROR")
BEST_DIR = "best"


def trial_rows(trial_id: str, status: str, records: list[dict[str, Any]], max_epochs: int) -> list[dict[str, Any]]:
    """One trial's rows of trials.parquet from its reported results (Tune's result dicts or dataframe rows)."""
    rows = []
    for rec in records:
        row: dict[str, Any] = {"trial_id": trial_id, "status": status, "epoch": _int(rec.get("epoch")),
                               "training_iteration": _int(rec.get("training_iteration"))}
        config = rec.get("config")
        if isinstance(config, dict):
            row.update({f"config/{k}": v for k, v in config.items()})
        row.update({k: v for k, v in rec.items() if k.startswith("config/")})
        for m in METRICS:
            if m in rec:
                row[m] = _float(rec[m])
        row["time_total_s"] = _float(rec.get("time_total_s"))
        rows.append(row)
    rows.sort(key=lambda r: r["training_iteration"] or 0)
    last = rows[-1]["training_iteration"] if rows else 0
    for r in rows:
        r["stopped_early"] = status == "TERMINATED" and (last or 0) < max_epochs
    return rows


def _int(v: Any) -> int | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)


def _float(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def final_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last row of each trial."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        prev = out.get(r["trial_id"])
        if prev is None or (r["training_iteration"] or 0) >= (prev["training_iteration"] or 0):
            out[r["trial_id"]] = r
    return out


def candidates(finals: dict[str, dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """Trials eligible as best / Pareto: finished with finite objectives, preferring those that ran all epochs."""
    done = [r for r in finals.values() if r["status"] == "TERMINATED"
            and all(r.get(m) is not None and math.isfinite(r[m]) for m in metrics)]
    full = [r for r in done if not r["stopped_early"]]
    return full or done


def dominates(a: dict[str, Any], b: dict[str, Any], metrics: list[str], modes: list[str]) -> bool:
    """a is at least as good as b in every objective and better in one."""
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    ge = all(s * a[m] >= s * b[m] for m, s in zip(metrics, sign))
    gt = any(s * a[m] > s * b[m] for m, s in zip(metrics, sign))
    return ge and gt


def pareto_front(rows: list[dict[str, Any]], metrics: list[str], modes: list[str]) -> list[dict[str, Any]]:
    """The non-dominated rows."""
    return [a for a in rows if not any(dominates(b, a, metrics, modes) for b in rows if b is not a)]


def best_row(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The row with the best value of one metric."""
    if not rows:
        return None
    return (max if mode == "max" else min)(rows, key=lambda r: r[metric])


def params_of(row: dict[str, Any]) -> dict[str, Any]:
    """The sampled values of a row (config/<name> -> name)."""
    return {k.removeprefix("config/"): v for k, v in row.items() if k.startswith("config/") and v is not None}


def export_config(path: Path, base: dict[str, Any], row: dict[str, Any], max_epochs: int) -> Path:
    """Write a ready-to-use run config: the base with the trial's values and its number of epochs."""
    raw = apply_params(base, params_of(row))
    raw["optim"] = {**raw.get("optim", {}), "epochs": max_epochs}
    raw["run"] = {**raw.get("run", {}), "name": None}
    cfg = build_config(raw, source=f"best config of trial {row['trial_id']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path)
    return path


def write_results(exp_dir: Path, rows: list[dict[str, Any]], base: dict[str, Any], metrics: list[str],
                  modes: list[str], max_epochs: int) -> dict[str, Any]:
    """Write trials.parquet, pareto.parquet (several objectives) and best/; returns a summary for run.json."""
    exp_dir = Path(exp_dir)
    if rows:
        write_parquet(exp_dir / "trials.parquet", rows)
    finals = final_rows(rows)
    pool = candidates(finals, metrics)
    best_dir = exp_dir / BEST_DIR
    summary: dict[str, Any] = {"trials_finished": sum(r["status"] == "TERMINATED" for r in finals.values()),
                               "trials_errored": sum(r["status"] == "ERROR" for r in finals.values()),
                               "trials_stopped_early": sum(bool(r["stopped_early"]) for r in finals.values())}
    if len(metrics) == 1:
        best = best_row(pool, metrics[0], modes[0])
        if best is not None:
            export_config(best_dir / "best.yaml", base, best, max_epochs)
            summary.update(best_trial=best["trial_id"], best={m: best[m] for m in metrics},
                           best_config=params_of(best))
        return summary
    front = pareto_front(pool, metrics, modes)
    front.sort(key=lambda r: [(-1 if mo == "max" else 1) * r[m] for m, mo in zip(metrics, modes)])
    table = [{"trial_id": r["trial_id"], **{k: v for k, v in r.items() if k.startswith("config/")},
              **{m: r[m] for m in metrics}, "epoch": r["epoch"], "training_iteration": r["training_iteration"]}
             for r in front]
    if table:
        write_parquet(exp_dir / "pareto.parquet", table)
    for r in front:
        export_config(best_dir / f"pareto-{r['trial_id']}.yaml", base, r, max_epochs)
    summary["pareto_trials"] = [r["trial_id"] for r in front]
    return summary


def write_spec(path: Path, spec_dict: dict[str, Any]) -> None:
    """The tune section as its own YAML file (read back by --resume)."""
    atomic_write_text(path, yaml.safe_dump(spec_dict, sort_keys=False))


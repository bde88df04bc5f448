"""`gradprom tune --resume DIR` without unpickling anything: the search is rebuilt from the Optuna study in
`optuna.db` and the project's own JSON/Parquet records, then a new Tuner runs only the trials still missing.

Ray's `Tuner.restore` would unpickle `tune/tuner.pkl`, `tune/search_gen_state-*.json` (a cloudpickle despite
its name), `tune/searcher-state-*.pkl` and the hex-encoded cloudpickles inside `experiment_state-*.json`; any
of them, planted in a shared or downloaded directory, runs code. None of those files is read here.

A trial is kept when both records agree it ended: `trial_status.json` says TERMINATED or ERROR and its Optuna
trial is closed. Every other trial (interrupted, or never started) is dropped with its run directory and rows,
and its point is evaluated again by a new trial (study.requeue_interrupted). ASHA's rungs are refilled from the
kept trials' rows, so the resumed scheduler compares new trials with the old ones as the original run did.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq

from gradprom.platform.atomic import atomic_write_text
from gradprom.platform.errors import DataError
from gradprom.platform.rundir import write_parquet

from .callback import STATUS_FILE, read_statuses
from .study import finished_ray_trials, load_study, requeue_interrupted
from .trainable import TRIALS_DIR

ENDED = ("TERMINATED", "ERROR")
TRIALS_TABLE = "trials.parquet"


@dataclass
class ResumePlan:
    """What survives of an interrupted search and how many trials are still to run."""

    kept: dict[str, str] = field(default_factory=dict)  # trial id -> TERMINATED | ERROR
    rows: list[dict[str, Any]] = field(default_factory=list)  # their trials.parquet rows
    remaining: int = 0
    requeued: int = 0  # interrupted points evaluated again first
    trials_in_study: int = 0


def plan_resume(exp: Path, num_trials: int, study_name: str, storage, tune_dir: str) -> ResumePlan:
    """Decide which trials are kept, drop the rest from disk, and close the study's interrupted trials."""
    exp = Path(exp)
    statuses = read_statuses(exp)
    table = exp / TRIALS_TABLE
    rows = pq.read_table(table).to_pylist() if table.is_file() else []
    study = load_study(exp, study_name, storage)
    if study is None:
        if rows or any(s in ENDED for s in statuses.values()):
            raise DataError(f"--resume {str(exp)!r}: trials ran but there is no Optuna study {study_name!r} in "
                            f"{str(exp / 'optuna.db')!r}. The experiment was written by a GradProm that kept the "
                            f"search only in Ray's pickle files, which --resume does not load (a pickle can run "
                            f"code); start a new search with `gradprom tune`.")
        kept: dict[str, str] = {}
        requeued = trials_in_study = 0
    else:
        closed = finished_ray_trials(study)
        kept = {t: s for t, s in statuses.items() if s in ENDED and t in closed}
        requeued = requeue_interrupted(study, storage)
        trials_in_study = len(study.get_trials(deepcopy=False))
    rows = [r for r in rows if r["trial_id"] in kept]
    _drop_unkept(exp, set(kept), tune_dir)
    if rows:
        write_parquet(table, rows)
    elif table.is_file():
        table.unlink()
    atomic_write_text(exp / STATUS_FILE, json.dumps(kept, indent=1) + "\n")
    return ResumePlan(kept=kept, rows=rows, remaining=max(0, num_trials - len(kept)), requeued=requeued,
                      trials_in_study=trials_in_study)


def _drop_unkept(exp: Path, kept: set[str], tune_dir: str) -> None:
    """Remove the run directories (trials/<id>/) and Ray trial folders of trials that will run again."""
    trials = exp / TRIALS_DIR
    if trials.is_dir():
        for d in trials.iterdir():
            if d.is_dir() and d.name not in kept:
                shutil.rmtree(d)
    ray_dir = exp / tune_dir
    if ray_dir.is_dir():
        for d in ray_dir.glob("run_trial_*"):  # run_trial_<id>_<n>_<params>_<time>
            parts = d.name.split("_")
            if d.is_dir() and len(parts) > 2 and parts[2] not in kept:
                shutil.rmtree(d)


def prime_asha(scheduler, rows: list[dict[str, Any]], metric: str) -> None:
    """Record the kept trials' per-epoch values in a new ASHA scheduler's rungs (its only state)."""
    brackets = getattr(scheduler, "_brackets", None)  # AsyncHyperBandScheduler's brackets; FIFO has none
    op = getattr(scheduler, "_metric_op", None)
    if not brackets or op is None:
        return
    by_trial: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_trial.setdefault(r["trial_id"], []).append(r)
    for tid, recs in by_trial.items():
        bracket = brackets[0]  # brackets=1 (make_scheduler)
        for r in sorted(recs, key=lambda r: r["training_iteration"] or 0):
            value, it = r.get(metric), r.get("training_iteration")
            if value is not None and it is not None:
                # the bracket keys its records by trial_id only
                bracket.on_result(SimpleNamespace(trial_id=tid), it, op * value)

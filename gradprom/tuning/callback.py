"""A Tune callback that keeps trials.parquet and the trials' statuses on disk while the search runs.

A resumed search is a new Tuner that runs only the missing trials (resume.py): the callback starts from the
kept trials' rows and statuses on disk and adds this Tuner's trials to them.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from ray.tune import Callback

from gradprom.platform.atomic import atomic_write_text
from gradprom.platform.rundir import write_parquet

from .results import STATUSES, trial_rows

log = logging.getLogger(__name__)
STATUS_FILE = "trial_status.json"
WRITE_EVERY_S = 2.0


def read_statuses(exp: Path) -> dict[str, str]:
    """trial_id -> Tune status (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) as last seen by the callback."""
    p = Path(exp) / STATUS_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


class TrialsTable(Callback):
    """Live trials.parquet (throttled to one write every few seconds) and trial_status.json."""

    def __init__(self, exp_dir: str, max_epochs: int, num_trials: int) -> None:
        self.exp = Path(exp_dir)
        self.max_epochs = max_epochs
        self.num_trials = num_trials
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.status: dict[str, str] = {}
        self.kept: dict[str, str] = {}  # trials of the run this one resumes
        self._written = 0.0

    def setup(self, **info: Any) -> None:
        """A resumed search starts from the rows and statuses of the trials it kept."""
        table = self.exp / "trials.parquet"
        if table.is_file():
            for row in pq.read_table(table).to_pylist():
                self.records.setdefault(row["trial_id"], []).append(row)
        self.kept = read_statuses(self.exp)
        self.status = dict(self.kept)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        status = {**self.kept, **{t.trial_id: t.status for t in trials}}
        if status != self.status:
            self.status = status
            atomic_write_text(self.exp / STATUS_FILE, json.dumps(status, indent=1) + "\n")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        recs = self.records.setdefault(trial.trial_id, [])
        if result.get("training_iteration") == 1:
            recs.clear()  # a restarted trial begins again
        recs.append(dict(result))
        self.on_step_end(iteration, trials)
        if time.monotonic() - self._written > WRITE_EVERY_S:
            self.write()

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.on_step_end(iteration, trials)
        self.write()
        last = (self.records.get(trial.trial_id) or [{}])[-1]
        done = sum(s in ("TERMINATED", "ERROR") for t, s in self.status.items() if t != trial.trial_id) + 1
        shown = "  ".join(f"{m} {last[m]:.4f}" for m in ("psnr", "ssim", "task") if isinstance(last.get(m), float))
        epochs = last.get("training_iteration")
        how = "stopped by ASHA" if isinstance(epochs, int) and epochs < self.max_epochs else "done"
        log.info("trial %s %s after %s epoch(s): %s  (%d/%d trials)", trial.trial_id, how, epochs, shown,
                 min(done, self.num_trials), self.num_trials)

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self.on_step_end(iteration, trials)
        self.write()
        log.warning("trial %s failed; its error is in %s", trial.trial_id, trial.path)

    def write(self) -> None:
        """Rewrite trials.parquet with every row so far."""
        self._written = time.monotonic()
        rows = []
        for tid, recs in self.records.items():
            st = self.status.get(tid, "RUNNING")
            rows += trial_rows(tid, st if st in STATUSES else "RUNNING", recs, self.max_epochs)
        if rows:
            write_parquet(self.exp / "trials.parquet", rows)

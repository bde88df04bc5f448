"""The federation's tables in its run directory: sites.parquet, rounds.parquet and epochs.parquet.

rounds.parquet has one row per round × site plus one row per round with site == "global" (the columns are
fixed by the tables contract the dashboard reads). Every write rewrites the whole small table atomically.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from gradprom.platform.rundir import RunDir, write_parquet

QUALITY = ("psnr", "ssim")
TRAIN_STATS = ("loss_e", "loss_r", "gate_open_rate", "mean_cos", "norm_ge", "norm_gr")


def task_columns(task: str) -> tuple[str, ...]:
    """The task metric columns: accuracy and auc, or dice."""
    return ("accuracy", "auc") if task == "classification" else ("dice",)


def rounds_schema(task: str) -> pa.Schema:
    """Column order and types of rounds.parquet (site rows also carry eval_* from client-side evaluation)."""
    f64 = pa.float64()
    metrics = [*QUALITY, *task_columns(task)]
    cols = [("round", pa.int64()), ("site", pa.string()), ("status", pa.string()), ("error", pa.string()),
            ("num_examples", pa.int64()), *[(m, f64) for m in metrics], *[(m, f64) for m in TRAIN_STATS],
            ("server_gate_open", f64), ("server_cos", f64), ("time", f64), ("psnr_input", f64),
            *[(f"eval_{m}", f64) for m in metrics]]
    return pa.schema(cols)


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


class RoundsRecorder:
    """Collects the rows of rounds.parquet as replies arrive and rewrites the table after each round."""

    def __init__(self, run: RunDir, task: str, rows: list[dict[str, Any]] | None = None, elapsed: float = 0.0):
        self.run, self.task = run, task
        self.schema = rounds_schema(task)
        self.rows: list[dict[str, Any]] = list(rows or [])
        self.t0 = time.monotonic() - elapsed  # a resumed federation continues its clock

    @property
    def path(self) -> Path:
        return self.run.path / "rounds.parquet"

    def now(self) -> float:
        """Seconds since the federation started."""
        return time.monotonic() - self.t0

    def site_row(self, rnd: int, site: str, status: str, error: str | None = None,
                 metrics: dict[str, float] | None = None) -> None:
        """A site's row for one round: its local-training metrics, or the reason it is missing."""
        m = metrics or {}
        row: dict[str, Any] = {"round": rnd, "site": site, "status": status, "error": error,
                               "num_examples": int(m["num-examples"]) if "num-examples" in m else None,
                               "time": self.now()}
        for k in (*QUALITY, *task_columns(self.task), "psnr_input"):
            row[k] = _num(m.get(f"val_{k}"))
        for k in TRAIN_STATS:
            row[k] = _num(m.get(k))
        self.rows.append(row)

    def site_eval(self, rnd: int, site: str, metrics: dict[str, float]) -> None:
        """Client-side evaluation of the global model on the site's split (eval_* columns)."""
        for row in self.rows:
            if row["round"] == rnd and row["site"] == site:
                for k in (*QUALITY, *task_columns(self.task)):
                    row[f"eval_{k}"] = _num(metrics.get(k))

    def global_row(self, rnd: int, metrics: dict[str, float], gate_open: float | None,
                   gate_cos: float | None, aggregated: bool = True, needed: int = 1) -> dict[str, Any]:
        """The global model's row: server-side evaluation, and the server gate's decision."""
        ok = [r for r in self.rows if r["round"] == rnd and r["status"] == "ok" and r["site"] != "global"]
        error = None if aggregated else (f"{len(ok)} site(s) answered with usable weights, {needed} needed "
                                         f"(federated.min_answers); the global model is unchanged")
        row: dict[str, Any] = {"round": rnd, "site": "global", "status": "ok" if aggregated else "failed",
                               "error": error, "time": self.now(),
                               "num_examples": sum(r["num_examples"] or 0 for r in ok) if aggregated else 0,
                               "server_gate_open": gate_open, "server_cos": gate_cos}
        for k in (*QUALITY, *task_columns(self.task), "psnr_input", "loss_e", "loss_r"):
            row[k] = _num(metrics.get(k))
        self.rows.append(row)
        return row

    def write(self) -> None:
        """Rewrite rounds.parquet with every row so far."""
        ordered = sorted(self.rows, key=lambda r: (r["round"], r["site"] == "global", r["site"]))
        rows = [{f.name: r.get(f.name) for f in self.schema} for r in ordered]
        for r in rows:  # NaN metrics (e.g. AUC of a one-class split) stay NaN; absent ones are null
            for k, v in r.items():
                if isinstance(v, float) and math.isinf(v):
                    r[k] = None
        write_parquet(self.path, pa.Table.from_pylist(rows, schema=self.schema))

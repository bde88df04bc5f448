"""`gradprom tune report`: the top trials as text and PNG plots of an experiment's trials.parquet.

Plots (in <experiment>/report/): objective.png (each objective's final value per trial, in trial order, with
the best so far), tau.png (tau against each objective), pareto.png (two objectives, the front highlighted).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from gradprom.platform.errors import DataError

from .results import candidates, final_rows, pareto_front


def load_experiment(exp: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """run.json and the rows of trials.parquet; a clear error when it is not a finished or running search."""
    run_json, table = exp / "run.json", exp / "trials.parquet"
    if not run_json.is_file() or json.loads(run_json.read_text()).get("kind") != "tune":
        raise DataError(f"{str(exp)!r} is not a tuning experiment (no run.json of kind 'tune'); pass the directory "
                        f"`gradprom tune` printed.")
    if not table.is_file():
        raise DataError(f"{str(exp)!r} has no trials.parquet yet: no trial has reported an epoch.")
    return json.loads(run_json.read_text()), pq.read_table(table).to_pylist()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def report(exp: Path, top: int = 5) -> str:
    """Write the plots and return the text: the top trials by the (first) objective."""
    info, rows = load_experiment(exp)
    metrics, modes = info["metrics"], info["modes"]
    finals = final_rows(rows)
    pool = candidates(finals, metrics)
    sign = 1 if modes[0] == "max" else -1
    ranked = sorted(pool, key=lambda r: -sign * r[metrics[0]])[:top]
    params = sorted({k for r in rows for k in r if k.startswith("config/")})
    head = ["trial_id", "epochs", *metrics, *(k.removeprefix("config/") for k in params)]
    lines = [f"{exp.name}: {info.get('status')}, {len(finals)} of {info['num_trials']} trials reported, "
             f"{sum(bool(r['stopped_early']) for r in finals.values())} stopped early by ASHA; "
             f"objective {' & '.join(f'{m} ({mo})' for m, mo in zip(metrics, modes))}",
             f"top {len(ranked)} by {metrics[0]}:", "  ".join(head)]
    for r in ranked:
        lines.append("  ".join(_fmt(v) for v in [r["trial_id"], r["training_iteration"], *(r[m] for m in metrics),
                                                 *(r.get(k) for k in params)]))
    out_dir = exp / "report"
    out_dir.mkdir(exist_ok=True)
    written = plot(out_dir, rows, finals, metrics, modes)
    lines.append("plots: " + ", ".join(str(p) for p in written))
    return "\n".join(lines)


def plot(out_dir: Path, rows: list[dict[str, Any]], finals: dict[str, dict[str, Any]], metrics: list[str],
         modes: list[str]) -> list[Path]:
    """objective.png, tau.png and (two or more objectives) pareto.png; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gradprom.platform.figures import save_figure

    order = list(dict.fromkeys(r["trial_id"] for r in rows))  # trials in the order they first reported
    trials = [finals[t] for t in order]
    written = []
    n = len(metrics)
    # --- each objective over trials, with the running best ---------------------------------------------
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.4), squeeze=False)
    for ax, m, mo in zip(axes[0], metrics, modes):
        ys = [r.get(m) for r in trials]
        xs = list(range(1, len(ys) + 1))
        early = [bool(r["stopped_early"]) for r in trials]
        ax.scatter([x for x, e in zip(xs, early) if not e], [y for y, e in zip(ys, early) if not e], label="all epochs")
        ax.scatter([x for x, e in zip(xs, early) if e], [y for y, e in zip(ys, early) if e], marker="x",
                   label="stopped by ASHA")
        best, run = [], None
        for y, e in zip(ys, early):
            if y is not None and not e and math.isfinite(y):
                run = y if run is None else (max(run, y) if mo == "max" else min(run, y))
            best.append(run)
        ax.step(xs, [math.nan if b is None else b for b in best], where="post", color="k", lw=1, label="best so far")
        ax.set_xlabel("trial (in order of its first report)")
        ax.set_ylabel(m)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out_dir / "objective.png")
    written.append(out_dir / "objective.png")
    # --- tau against each objective ---------------------------------------------------------------------
    if any(r.get("config/tau") is not None for r in trials):
        fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.4), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            pts = [(r["config/tau"], r.get(m)) for r in trials if r.get("config/tau") is not None]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts])
            ax.set_xlabel("tau (gate threshold)")
            ax.set_ylabel(m)
        fig.tight_layout()
        save_figure(fig, out_dir / "tau.png")
        written.append(out_dir / "tau.png")
    # --- the Pareto front of the first two objectives ----------------------------------------------------
    if n >= 2:
        pool = candidates(finals, metrics)
        front = pareto_front(pool, metrics, modes)
        fig, ax = plt.subplots(figsize=(4.8, 3.8))
        ax.scatter([r[metrics[0]] for r in pool], [r[metrics[1]] for r in pool], color="0.6", label="trials")
        front = sorted(front, key=lambda r: r[metrics[0]])
        ax.plot([r[metrics[0]] for r in front], [r[metrics[1]] for r in front], "o-", color="C3", label="Pareto front")
        ax.set_xlabel(f"{metrics[0]} ({modes[0]})")
        ax.set_ylabel(f"{metrics[1]} ({modes[1]})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, out_dir / "pareto.png")
        written.append(out_dir / "pareto.png")
    return written

"""One row of the runs table per run: a local run's best validation numbers, a Tune experiment's best trial
(its searched values beside its metrics) and a federation's sites (their degradations, not the server's)."""

from __future__ import annotations

import re
from typing import Any

from .discover import Run, read_parquet
from .views.common import duration, href, md_link, num, task_metrics

COLUMNS = ["name", "kind", "status", "task", "strategy", "tau", "lambda_e", "lambda_r", "data", "trials",
           "best_psnr", "best_ssim", "task_metric", "best_task", "start", "length"]
_SIGMA = re.compile(r"^gaussian:sigma=([0-9.eE+-]+)$")


def _best(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [num(r.get(key)) for r in rows]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def val_rows(run: Run) -> tuple[list[dict[str, Any]], list[str]]:
    """The validation rows of a run's epochs.parquet, and the problem met reading it."""
    table, problem = read_parquet(run.path / "epochs.parquet")
    if table is None:
        return [], [problem] if problem else []
    return [r for r in table.to_pylist() if r.get("split") == "val"], []


def objectives(run: Run) -> tuple[list[str], list[str]]:
    """A Tune experiment's objective metrics and their modes (max | min) from run.json."""
    metrics = run.info.get("metrics") or [run.info.get("objective") or "psnr"]
    metrics = [metrics] if isinstance(metrics, str) else [str(m) for m in metrics]
    modes = run.info.get("modes") or run.info.get("mode") or "max"
    modes = [modes] * len(metrics) if isinstance(modes, str) else [str(m) for m in modes]
    return metrics, (modes + ["max"] * len(metrics))[: len(metrics)]


def final_trials(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last reported row of each trial."""
    last: dict[str, dict[str, Any]] = {}
    for r in rows:
        tid = str(r.get("trial_id"))
        prev = last.get(tid)
        if prev is None or (r.get("training_iteration") or 0) >= (prev.get("training_iteration") or 0):
            last[tid] = r
    return last


def best_trial(run: Run, finals: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The experiment's best trial: the one run.json names, else (still running, or several objectives) the
    best in the first objective among the finished trials (those on the Pareto front when it names them),
    preferring trials that ran all their epochs, as the tuner does."""
    named = run.info.get("best_trial")
    if named is not None and str(named) in finals:
        return finals[str(named)]
    metrics, modes = objectives(run)
    metric, mode = metrics[0], modes[0]
    pool = [r for r in finals.values() if num(r.get(metric)) is not None and r.get("status") != "ERROR"]
    front = {str(t) for t in run.info.get("pareto_trials") or []}
    pool = [r for r in pool if str(r.get("trial_id")) in front] or pool
    pool = [r for r in pool if not r.get("stopped_early")] or pool
    if not pool:
        return None
    return (max if mode == "max" else min)(pool, key=lambda r: float(r[metric]))


def sites_text(degradations: list[str]) -> str:
    """What the sites of a federation were fed: '4 sites, σ 0.05–0.2' for a Gaussian noise ramp, else the
    distinct specs."""
    n = len(degradations)
    if not n:
        return ""
    sigmas = [_SIGMA.match(d) for d in degradations]
    if all(sigmas):
        lo, hi = min(float(m.group(1)) for m in sigmas), max(float(m.group(1)) for m in sigmas)
        return f"{n} sites, σ {lo:g}" if lo == hi else f"{n} sites, σ {lo:g}–{hi:g}"
    distinct = list(dict.fromkeys(d or "none" for d in degradations))
    shown = "; ".join(distinct[:3]) + ("; …" if len(distinct) > 3 else "")
    return f"{n} sites, {shown}"


def _federation(run: Run, row: dict[str, Any], problems: list[str]) -> None:
    table, problem = read_parquet(run.path / "sites.parquet")
    if problem:
        problems.append(problem)
    if table is not None and "degradation" in table.column_names:
        sites = sites_text([str(d or "") for d in table.column("degradation").to_pylist()])
        source = run.info.get("data") or (run.config.get("data") or {}).get("source") or ""
        row["data"] = f"{source} · {sites}" if source else sites


def _tune(run: Run, row: dict[str, Any], problems: list[str]) -> None:
    table, problem = read_parquet(run.path / "trials.parquet")
    if problem:
        problems.append(problem)
    finals = final_trials(table.to_pylist() if table is not None else [])
    best = best_trial(run, finals)
    row["trials"] = f"{len(finals)}" + (f" · best {best.get('trial_id')}" if best is not None else "")
    if best is None:
        return
    for key in ("tau", "lambda_e", "lambda_r"):  # a searched value is the best trial's, else the base config's
        if f"config/{key}" in best:
            row[key] = num(best[f"config/{key}"])
    if best.get("config/strategy"):
        row["strategy"] = str(best["config/strategy"])
    metrics = task_metrics(k for k in best if best.get(k) is not None)
    row.update(best_psnr=num(best.get("psnr")), best_ssim=num(best.get("ssim")),
               task_metric=metrics[0] if metrics else "", best_task=num(best.get(metrics[0])) if metrics else None)


def run_row(run: Run) -> tuple[dict[str, Any], list[str]]:
    """One row of the runs table, and the problems met reading the run (each prefixed with the run's id)."""
    info, cfg = run.info, run.config
    g = cfg.get("gradprom") or {}
    data = cfg.get("data") or {}
    source = info.get("data") or data.get("source") or ""
    degradation = info.get("degradation") or data.get("degradation") or ""
    row: dict[str, Any] = {
        "id": run.id,
        "name": md_link(run.id, href(run.kind, run.id)),
        "kind": run.kind,
        "status": info.get("status") or ("unreadable" if run.problems else ""),
        "task": info.get("task") or cfg.get("task") or "",
        "strategy": info.get("strategy") or g.get("strategy") or "",
        "tau": num(info.get("tau", g.get("tau"))),
        "lambda_e": num(g.get("lambda_e")),
        "lambda_r": num(g.get("lambda_r")),
        "data": f"{source} · {degradation}" if degradation else str(source),
        "start": str(info.get("start") or "").replace("T", " ").split("+")[0],
        "length": duration(info),
    }
    problems: list[str] = []
    if run.kind == "tune":
        _tune(run, row, problems)
    else:
        if run.kind == "federated":
            _federation(run, row, problems)
        rows, p = val_rows(run)
        problems += p
        metrics = task_metrics(k for r in rows for k in r)
        metric = metrics[0] if metrics else ""  # the headline: accuracy for classification, dice for segmentation
        row.update(best_psnr=_best(rows, "psnr"), best_ssim=_best(rows, "ssim"), task_metric=metric,
                   best_task=_best(rows, metric) if metric else None)
    # empty cells are left out: 20,000 rows travel to the browser on every change
    row = {k: v for k, v in row.items() if v not in (None, "")}
    return row, [f"{run.id}: {p}" for p in run.problems + problems]

"""The runs page: a filterable table of every run under the runs directory; selecting two or more runs draws
their validation curves side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate
from plotly.subplots import make_subplots

from ..discover import Run, find_runs, read_table, signature
from .common import PALETTE, data_table, duration, graph, href, message_figure, notice, notice_box, num, task_metrics

COLUMNS = ["name", "kind", "status", "task", "strategy", "tau", "lambda_e", "lambda_r", "data", "best_psnr",
           "best_ssim", "task_metric", "best_task", "start", "length"]


def layout(interval_ms: int) -> html.Div:
    """The page skeleton; the tick callback fills it and keeps it live."""
    return html.Div([
        html.H2("Runs"),
        notice_box("runs-notice"),
        html.P("Filter with the boxes under the headers (e.g. `gradprom` or `> 20`); tick two or more rows to "
               "compare their validation curves.", className="hint"),
        data_table("runs-table", [], COLUMNS, filter_action="native", sort_action="native",
                   row_selectable="multi", selected_row_ids=[], markdown_columns=("name",)),
        graph("runs-compare"),
        dcc.Interval(id="runs-tick", interval=interval_ms),
        dcc.Store(id="runs-sig"),
    ])


def _val_rows(run: Run) -> tuple[list[dict[str, Any]], list[str]]:
    table, problems = read_table(run.path / "epochs.parquet")
    if table is None:
        return [], problems
    return [r for r in table.to_pylist() if r.get("split") == "val"], problems


def _best(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [num(r.get(key)) for r in rows]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def run_row(run: Run) -> tuple[dict[str, Any], list[str]]:
    """One row of the runs table, and the problems met reading the run."""
    info, cfg = run.info, run.config
    g = cfg.get("gradprom") or {}
    data = cfg.get("data") or {}
    rows, problems = _val_rows(run)
    if not rows and (run.path / "trials.parquet").is_file():  # a Tune experiment: best over its trials
        t, p = read_table(run.path / "trials.parquet")
        problems += p
        rows = t.to_pylist() if t is not None else []
    metrics = task_metrics(k for r in rows for k in r)
    # the task's headline metric: accuracy for classification, dice for segmentation
    metric = metrics[0] if metrics else ""
    source = info.get("data") or data.get("source") or ""
    degradation = info.get("degradation") or data.get("degradation") or ""
    row = {
        "id": run.id,
        "name": f"[{run.id}]({href(run.kind, run.id)})",
        "kind": run.kind,
        "status": info.get("status") or ("unreadable" if run.problems else ""),
        "task": info.get("task") or cfg.get("task") or "",
        "strategy": info.get("strategy") or g.get("strategy") or "",
        "tau": num(info.get("tau", g.get("tau"))),
        "lambda_e": num(g.get("lambda_e")),
        "lambda_r": num(g.get("lambda_r")),
        "data": f"{source} · {degradation}" if degradation else str(source),
        "best_psnr": _best(rows, "psnr"),
        "best_ssim": _best(rows, "ssim"),
        "task_metric": metric,
        "best_task": _best(rows, metric) if metric else None,
        "start": str(info.get("start") or "").replace("T", " ").split("+")[0],
        "length": duration(info),
    }
    return row, [f"{run.id}: {p}" for p in run.problems + problems]


def table_rows(root: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """All rows of the runs table and the page's notices."""
    runs = find_runs(root)
    if not runs:
        return [], [f"No runs in {root} yet. Start one, e.g. `gradprom train --out {root}`; this page updates "
                    f"by itself when one appears."]
    rows, problems = [], []
    for run in runs:
        row, p = run_row(run)
        rows.append(row)
        problems += p
    return rows, problems


def compare_figure(root: Path, run_ids: list[str]) -> go.Figure:
    """Validation PSNR, SSIM and task metric per epoch of the selected runs, side by side."""
    if len(run_ids) < 2:
        return message_figure("tick two or more runs in the table to compare their curves")
    from ..discover import get_run

    panels = ["psnr", "ssim", "task"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=["val PSNR (dB)", "val SSIM", "val task metric"])
    for i, rid in enumerate(run_ids):
        run = get_run(root, rid)
        if run is None:
            continue
        rows, _ = _val_rows(run)
        metrics = task_metrics(k for r in rows for k in r)
        for col, key in enumerate(panels, start=1):
            key = (metrics[0] if metrics else None) if key == "task" else key
            if key is None:
                continue
            pts = [(r["epoch"], r.get(key)) for r in rows if r.get(key) is not None]
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                     name=f"{rid} {key}" if col == 3 else rid, legendgroup=rid,
                                     showlegend=col == 1 or col == 3,
                                     line={"color": PALETTE[i % len(PALETTE)]}), row=1, col=col)
    fig.update_xaxes(title_text="epoch", tickformat="d")
    fig.update_layout(template="plotly_white", height=360, uirevision="keep", margin={"t": 40})
    return fig


def register(app, root: Path) -> None:
    """Callbacks of the runs page."""

    @app.callback(Output("runs-table", "data"), Output("runs-notice", "children"), Output("runs-sig", "data"),
                  Input("runs-tick", "n_intervals"), State("runs-sig", "data"))
    def refresh(_n, sig):
        new = signature(root, depth=3)
        if new == sig:
            raise PreventUpdate
        rows, problems = table_rows(root)
        return rows, notice("runs-notice", problems), new

    @app.callback(Output("runs-compare", "figure"), Input("runs-table", "selected_row_ids"),
                  Input("runs-sig", "data"))
    def compare(ids, _sig):
        return compare_figure(root, list(ids or []))

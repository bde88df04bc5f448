"""A Ray Tune experiment: the trials table (config, status, metrics, stopped early), the objective over
trials, τ against each objective, the Pareto front of a multi-objective search and the exported best config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html
from plotly.subplots import make_subplots

from ..discover import Run, read_table
from ..rows import objectives
from .common import (
    cell,
    changed_run,
    data_table,
    file_url,
    graph,
    href,
    int_ticks,
    message_figure,
    notice,
    notice_box,
    num,
)

_ORDER = ["trial_id", "run", "status", "epochs", "stopped_early"]


def layout(exp_id: str, interval_ms: int) -> html.Div:
    """The page skeleton of one Tune experiment; the tick callback fills it."""
    return html.Div([
        html.H2(f"Tuning: {exp_id}", id="tune-title"),
        notice_box("tune-notice"),
        html.Div(id="tune-summary"),
        html.H3("Trials (latest epoch of each)"),
        data_table("tune-trials-table", [], None, filter_action="native", sort_action="native", page_size=20),
        graph("tune-objective"),
        graph("tune-tau"),
        graph("tune-pareto"),
        html.H3("Exported best configuration"),
        html.Div(id="tune-best"),
        dcc.Interval(id="tune-tick", interval=interval_ms),
        dcc.Store(id="tune-id", data=exp_id),
        dcc.Store(id="tune-sig"),
    ])


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last reported row of each trial, in order of first appearance, with its number of epochs."""
    last: dict[str, dict[str, Any]] = {}
    for r in rows:
        tid = str(r.get("trial_id"))
        prev = last.get(tid)
        if prev is None or (r.get("training_iteration") or 0) >= (prev.get("training_iteration") or 0):
            last[tid] = {**r, "epochs": r.get("training_iteration")}
    return list(last.values())


def trials_table(latest: list[dict[str, Any]], run: Run | None = None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Rows and columns of the trials table: id, its run page, status, epochs, stopped early, config/*, metrics."""
    if run is not None:  # a trial that wrote an ordinary run directory links to its run page
        for r in latest:
            tid = str(r.get("trial_id"))
            if (run.path / "trials" / tid / "run.json").is_file():
                r["run"] = f"[run]({href('local', f'{run.id}/trials/{tid}')})"
    keys = list(dict.fromkeys(k for r in latest for k in r))
    cols = [k for k in _ORDER if k in keys] + [k for k in keys if k.startswith("config/")]
    cols += [k for k in keys if k not in cols and k not in ("epoch", "training_iteration")]
    rows = [{"id": str(r.get("trial_id")), **{k: cell(r.get(k)) for k in cols}} for r in latest]
    for r in rows:
        if isinstance(r.get("stopped_early"), bool):
            r["stopped_early"] = "yes" if r["stopped_early"] else "no"
    return rows, [{"id": c, "name": c, **({"presentation": "markdown"} if c == "run" else {})} for c in cols]


def objective_figure(latest: list[dict[str, Any]], metrics: list[str], modes: list[str]) -> go.Figure:
    """Each objective's final value per trial in trial order, with the best so far."""
    if not latest:
        return message_figure("no trial has reported yet")
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[f"{m} ({mode}) over trials"
                                                                  for m, mode in zip(metrics, modes)])
    for c, (m, mode) in enumerate(zip(metrics, modes), start=1):
        pts = [(i, r.get(m), r.get("trial_id")) for i, r in enumerate(latest) if num(r.get(m)) is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], text=[p[2] for p in pts],
                                 mode="markers", name=m, marker={"size": 9}), row=1, col=c)
        best, run_best = [], None
        for p in pts:
            run_best = p[1] if run_best is None else (max if mode == "max" else min)(run_best, p[1])
            best.append(run_best)
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=best, mode="lines", name=f"best {m} so far",
                                 line={"dash": "dot"}), row=1, col=c)
    fig.update_xaxes(title_text="trial (in start order)", **int_ticks(len(latest)))
    fig.update_layout(template="plotly_white", height=320, uirevision="keep", margin={"t": 40})
    return fig


def tau_figure(latest: list[dict[str, Any]], metrics: list[str]) -> go.Figure:
    """τ of each trial against each objective."""
    pts = [r for r in latest if num(r.get("config/tau")) is not None]
    if not pts:
        return message_figure("τ was not searched in this experiment")
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[f"τ against {m}" for m in metrics])
    for c, m in enumerate(metrics, start=1):
        fig.add_trace(go.Scatter(x=[r["config/tau"] for r in pts], y=[r.get(m) for r in pts],
                                 text=[r.get("trial_id") for r in pts], mode="markers", name=f"τ vs {m}",
                                 marker={"size": 9}), row=1, col=c)
        fig.update_yaxes(title_text=m, row=1, col=c)
    fig.update_xaxes(title_text="τ")
    fig.update_layout(template="plotly_white", height=320, uirevision="keep", margin={"t": 40})
    return fig


def pareto_figure(latest: list[dict[str, Any]], pareto: list[dict[str, Any]], metrics: list[str]) -> go.Figure:
    """All trials in the plane of the first two objectives, the non-dominated ones joined as the front."""
    if len(metrics) < 2:
        return message_figure("single-objective experiment: no Pareto front")
    a, b = metrics[:2]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[r.get(a) for r in latest], y=[r.get(b) for r in latest], mode="markers",
                             text=[r.get("trial_id") for r in latest], name="trials",
                             marker={"color": "#bbb", "size": 9}))
    front = sorted((r for r in pareto if num(r.get(a)) is not None), key=lambda r: r[a])
    fig.add_trace(go.Scatter(x=[r[a] for r in front], y=[r.get(b) for r in front], mode="lines+markers",
                             text=[r.get("trial_id") for r in front], name="Pareto front",
                             marker={"color": "#d62728", "size": 11}))
    fig.update_layout(template="plotly_white", height=360, uirevision="keep", title=f"Pareto front: {a} and {b}",
                      xaxis_title=a, yaxis_title=b, margin={"t": 40})
    return fig


def best_configs(run: Run) -> list:
    """The exported YAML files under best/, shown as text with a link to each."""
    best = run.path / "best"
    files = sorted(best.glob("*.yaml")) if best.is_dir() else []
    if not files:
        return [html.P("no best configuration exported yet")]
    out = []
    for f in sorted(files, key=lambda p: p.name != "best.yaml"):
        try:
            text = f.read_text()
        except OSError as e:
            text = f"unreadable: {e}"
        out += [html.A(f"best/{f.name}", href=file_url(run.id, f"best/{f.name}"), target="_blank"),
                html.Pre(text, className="best-config", style={"background": "#f6f6f6", "padding": "6px"})]
    return out


def register(app, root: Path) -> None:
    """Callbacks of the tuning page."""

    @app.callback(Output("tune-summary", "children"), Output("tune-trials-table", "data"),
                  Output("tune-trials-table", "columns"), Output("tune-objective", "figure"),
                  Output("tune-tau", "figure"), Output("tune-pareto", "figure"), Output("tune-best", "children"),
                  Output("tune-notice", "children"), Output("tune-sig", "data"),
                  Input("tune-tick", "n_intervals"), State("tune-id", "data"), State("tune-sig", "data"))
    def refresh(_n, exp_id, sig):
        run, new = changed_run(root, exp_id, sig)
        if run is None:
            empty = message_figure("no such experiment")
            return (None, [], [], empty, empty, empty, None, notice("tune-notice", [new]), "missing")
        table, problems = read_table(run.path / "trials.parquet")
        pareto, p2 = read_table(run.path / "pareto.parquet")
        problems = run.problems + problems + p2
        if table is None and not problems:
            problems.append("no trials.parquet yet: the experiment has not reported a trial")
        latest = latest_rows(table.to_pylist() if table is not None else [])
        metrics, modes = objectives(run)
        rows, columns = trials_table(latest, run)
        status = run.info.get("status", "")
        summary = html.P(f"status {status} · objective {', '.join(f'{m} ({d})' for m, d in zip(metrics, modes))} "
                         f"· {len(latest)} of {run.info.get('num_trials', '?')} trials reported", id="tune-status")
        return (summary, rows, columns, objective_figure(latest, metrics, modes), tau_figure(latest, metrics),
                pareto_figure(latest, pareto.to_pylist() if pareto is not None else [], metrics),
                best_configs(run), notice("tune-notice", problems), new)

"""The runs page: a filterable table of every run under the runs directory; selecting two or more runs draws
their validation curves side by side."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate
from plotly.subplots import make_subplots

from ..index import RunIndex
from ..rows import COLUMNS, run_row, val_rows
from .common import PALETTE, data_table, graph, message_figure, notice, notice_box, task_metrics

WAIT_S = 1.0  # the longest a poll waits for a running refresh (at most half the interval)


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


def _empty(root: Path) -> str:
    return (f"No runs in {root} yet. Start one, e.g. `gradprom train --out {root}`; this page updates by itself "
            f"when one appears.")


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
        rows, _ = val_rows(run)
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


def register(app, root: Path, interval_s: float = 2.0) -> RunIndex:
    """Callbacks of the runs page; returns the index they read (one per app)."""
    index = RunIndex(root, run_row)
    # a poll never waits long for a refresh: the browser drops a poll's answer once the next poll has started
    wait = min(WAIT_S, interval_s / 2)

    @app.callback(Output("runs-table", "data"), Output("runs-notice", "children"), Output("runs-sig", "data"),
                  Input("runs-tick", "n_intervals"), State("runs-sig", "data"))
    def refresh(_n, sig):
        snap = index.snapshot(max_age=interval_s, wait=wait)
        if snap is None:
            if sig == "reading":
                raise PreventUpdate
            return [], notice("runs-notice", [f"Reading the run directories under {root} (the first time takes "
                                              f"a few seconds per thousand runs)…"]), "reading"
        if snap.version == sig:
            raise PreventUpdate
        problems = snap.problems or ([] if snap.rows else [_empty(root)])
        return snap.rows, notice("runs-notice", problems), snap.version

    @app.callback(Output("runs-compare", "figure"), Input("runs-table", "selected_row_ids"),
                  Input("runs-sig", "data"))
    def compare(ids, _sig):
        return compare_figure(root, list(ids or []))

    return index

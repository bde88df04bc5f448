"""A federation: per-hospital curves over rounds (PSNR, task metric, gate-open rate), a hospital × round heat
map of the gate-open rate, failed and rejected replies per round, and the global model's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html
from plotly.subplots import make_subplots

from ..discover import read_table
from .common import (
    PALETTE,
    cell,
    changed_run,
    data_table,
    graph,
    int_ticks,
    message_figure,
    notice,
    notice_box,
    num,
    task_metrics,
)

GLOBAL = "global"
ROUND_COLUMNS = ["round", "site", "status", "error", "num_examples", "psnr", "ssim", "accuracy", "auc", "dice",
                 "loss_e", "loss_r", "gate_open_rate", "mean_cos", "norm_ge", "norm_gr", "server_gate_open",
                 "server_cos", "time"]


def layout(fed_id: str, interval_ms: int) -> html.Div:
    """The page skeleton of one federation; the tick callback fills it."""
    return html.Div([
        html.H2(f"Federation: {fed_id}", id="fed-title"),
        notice_box("fed-notice"),
        html.Div(id="fed-summary"),
        data_table("fed-sites-table", [], None, page_size=20),
        graph("fed-curves"),
        graph("fed-heatmap"),
        graph("fed-failures"),
        graph("fed-global"),
        html.H3("Rounds (newest first)"),
        data_table("fed-rounds-table", [], None, filter_action="native", sort_action="native", page_size=20),
        dcc.Interval(id="fed-tick", interval=interval_ms),
        dcc.Store(id="fed-id", data=fed_id),
        dcc.Store(id="fed-sig"),
    ])


def _sites(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({str(r["site"]) for r in rows if r.get("site") not in (None, GLOBAL)})


def curves_figure(rows: list[dict[str, Any]], metric: str | None) -> go.Figure:
    """PSNR, the task metric and the gate-open rate of each hospital over rounds; the global model dashed."""
    if not rows:
        return message_figure("no round has finished yet")
    keys = ["psnr", metric, "gate_open_rate"] if metric else ["psnr", "gate_open_rate"]
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[f"{k} per hospital" for k in keys])
    for i, site in enumerate(_sites(rows) + [GLOBAL]):
        color = "black" if site == GLOBAL else PALETTE[i % len(PALETTE)]  # one colour per hospital in every panel
        ok = [r for r in rows if r.get("site") == site and r.get("status") == "ok"]
        for c, k in enumerate(keys, start=1):
            pts = [(r["round"], r.get(k)) for r in ok if num(r.get(k)) is not None]
            if pts:
                fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                         name=site, legendgroup=site, showlegend=c == 1,
                                         line={"dash": "dash" if site == GLOBAL else "solid", "color": color}),
                              row=1, col=c)
    fig.update_xaxes(title_text="round", **int_ticks(len({r.get("round") for r in rows})))
    fig.update_layout(template="plotly_white", height=340, uirevision="keep", margin={"t": 40})
    return fig


def heatmap_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Hospital × round gate-open rate (blank where the hospital's reply failed or was rejected)."""
    sites = _sites(rows)
    rounds = sorted({int(r["round"]) for r in rows if r.get("round") is not None})
    if not sites or not rounds:
        return message_figure("no hospital has reported yet")
    z = [[None] * len(rounds) for _ in sites]
    for r in rows:
        if r.get("site") in sites and r.get("status") == "ok":
            z[sites.index(r["site"])][rounds.index(int(r["round"]))] = num(r.get("gate_open_rate"))
    fig = go.Figure(go.Heatmap(z=z, x=rounds, y=sites, zmin=0, zmax=1, colorscale="Greens",
                               colorbar={"title": "open rate"}, hoverongaps=False))
    fig.update_layout(template="plotly_white", height=max(240, 40 * len(sites) + 120), uirevision="keep",
                      title="gate-open rate, hospital × round (blank: no valid reply)", xaxis_title="round",
                      xaxis={"dtick": 1}, margin={"t": 40})
    return fig


def failures_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Failed and rejected hospital replies per round."""
    rounds = sorted({int(r["round"]) for r in rows if r.get("round") is not None})
    if not rounds:
        return message_figure("no round has finished yet")
    fig = go.Figure()
    for status, color in (("failed", "#d62728"), ("rejected", "#ff7f0e")):
        counts = [sum(1 for r in rows if r.get("round") == k and r.get("site") != GLOBAL and r.get("status") == status)
                  for k in rounds]
        fig.add_trace(go.Bar(x=rounds, y=counts, name=status, marker={"color": color}))
    fig.update_layout(template="plotly_white", barmode="stack", height=260, uirevision="keep",
                      title="failed (crashed, timed out, missing data) and rejected (non-finite) replies per round",
                      xaxis_title="round", xaxis={"dtick": 1}, yaxis={"dtick": 1, "rangemode": "tozero"},
                      margin={"t": 40})
    return fig


def global_figure(rows: list[dict[str, Any]], metrics: list[str]) -> go.Figure:
    """The global model's metrics per round (and the server-level gate when the gate runs on the server)."""
    g = [r for r in rows if r.get("site") == GLOBAL]
    if not g:
        return message_figure("no global evaluation yet")
    keys = [k for k in ["psnr", "ssim", *metrics, "server_gate_open", "server_cos"]
            if any(num(r.get(k)) is not None for r in g)]
    fig = make_subplots(rows=1, cols=max(len(keys), 1), subplot_titles=[f"global {k}" for k in keys])
    for c, k in enumerate(keys, start=1):
        pts = [(r["round"], r[k]) for r in g if num(r.get(k)) is not None]
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=k),
                      row=1, col=c)
    fig.update_xaxes(title_text="round", **int_ticks(len({r.get("round") for r in rows})))
    fig.update_layout(template="plotly_white", height=300, uirevision="keep", showlegend=False, margin={"t": 40})
    return fig


def privacy_text(info: dict[str, Any]) -> str:
    """The federation's privacy settings from run.json (SecAgg+ or DP parameters), in one phrase."""
    if info.get("secure_aggregation") == "secagg+":
        return (f"SecAgg+ (the server sees only the sites' weighted mean; clipping range "
                f"{info.get('secagg_clipping_range'):g}, {info.get('secagg_quantization_range')} levels, max weight "
                f"{info.get('secagg_max_weight'):g}), no DP")
    dp = info.get("dp")
    if not dp or dp == "none":
        return "no DP"
    eps = info.get("dp_epsilon")
    spent = f", ε {eps:.3g} at δ {info.get('dp_delta'):g}" if isinstance(eps, (int, float)) else ", ε not accounted"
    return (f"DP {dp} (clipping norm {info.get('dp_clipping_norm'):g}, noise multiplier "
            f"{info.get('dp_noise_multiplier'):g}{spent})")


def register(app, root: Path) -> None:
    """Callbacks of the federation page."""

    @app.callback(Output("fed-summary", "children"), Output("fed-sites-table", "data"),
                  Output("fed-sites-table", "columns"), Output("fed-curves", "figure"),
                  Output("fed-heatmap", "figure"), Output("fed-failures", "figure"), Output("fed-global", "figure"),
                  Output("fed-rounds-table", "data"), Output("fed-rounds-table", "columns"),
                  Output("fed-notice", "children"), Output("fed-sig", "data"),
                  Input("fed-tick", "n_intervals"), State("fed-id", "data"), State("fed-sig", "data"))
    def refresh(_n, fed_id, sig):
        run, new = changed_run(root, fed_id, sig)
        if run is None:
            empty = message_figure("no such federation")
            return (None, [], [], empty, empty, empty, empty, [], [], notice("fed-notice", [new]), "missing")
        rounds_t, problems = read_table(run.path / "rounds.parquet")
        sites_t, p2 = read_table(run.path / "sites.parquet")
        problems = run.problems + problems + p2
        if rounds_t is None and not problems:
            problems.append("no rounds.parquet yet: no round has finished")
        rows = rounds_t.to_pylist() if rounds_t is not None else []
        metrics = task_metrics(k for r in rows for k in r if r.get(k) is not None)
        headline = next((m for m in ("dice", "accuracy", "auc") if m in metrics), None)
        info = run.info
        summary = html.P(f"status {info.get('status', '')} · {info.get('hospitals', '?')} hospitals · round "
                         f"{max((r['round'] for r in rows), default=0)} of {info.get('rounds', '?')} · "
                         f"{info.get('fl_strategy', '')} · gate level {info.get('gate_level', '?')} · "
                         f"{privacy_text(info)}", id="fed-status")
        sites = [{k: cell(v) for k, v in r.items()} for r in (sites_t.to_pylist() if sites_t is not None else [])]
        cols = [c for c in ROUND_COLUMNS if any(c in r for r in rows)]
        shown = sorted(rows, key=lambda r: (-(r.get("round") or 0), r.get("site") == GLOBAL, str(r.get("site"))))
        table = [{c: cell(r.get(c)) for c in cols} for r in shown]
        return (summary, sites, [{"id": c, "name": c} for c in (sites[0] if sites else [])],
                curves_figure(rows, headline), heatmap_figure(rows), failures_figure(rows),
                global_figure(rows, metrics), table, [{"id": c, "name": c} for c in cols],
                notice("fed-notice", problems), new)

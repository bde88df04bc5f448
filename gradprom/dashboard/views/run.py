"""One run: loss / PSNR / SSIM / task-metric curves per epoch, the gate per step (cosine against τ, open or
closed, open rate, ‖g_e‖ and ‖g_r‖), the layer × step heat map in `layer` granularity, and the samples
figure."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa
import pyarrow.compute as pc
from dash import Input, Output, State, dcc, html
from plotly.subplots import make_subplots

from .. import downsample
from ..discover import Run, read_steps, read_table
from .common import (
    cell,
    changed_run,
    data_table,
    duration,
    file_url,
    graph,
    int_ticks,
    message_figure,
    notice,
    notice_box,
    num,
    task_metrics,
)

# the page outputs of the last state of each run, so a reload or a second tab does not rebuild them
_RENDERED: dict[str, tuple[str, tuple]] = {}
_LOCK = threading.Lock()
SUMMARY_KEYS = ["status", "kind", "task", "strategy", "tau", "lambda_e", "lambda_r", "granularity", "scale",
                "scale_factor", "moments", "gate_metric", "optimizer", "data", "degradation", "start", "end", "length",
                "steps", "error"]  # scale..optimizer: the gate variant (issue 14), in run.json since then


def layout(run_id: str, interval_ms: int) -> html.Div:
    """The page skeleton of one run; the tick callback fills it."""
    return html.Div([
        html.H2(run_id, id="run-title"),
        notice_box("run-notice"),
        data_table("run-summary", [], ["field", "value"], page_size=20),
        html.H3("Per epoch"),
        graph("run-curves"),
        data_table("run-epochs-table", [], None, page_size=12),
        html.H3("The gate, per step"),
        graph("run-gate"),
        html.Div(graph("run-heatmap"), id="run-heatmap-box"),
        html.H3("Samples (degraded / enhanced / clean) from the latest evaluation"),
        html.Div(id="run-samples"),
        dcc.Interval(id="run-tick", interval=interval_ms),
        dcc.Store(id="run-id", data=run_id),
        dcc.Store(id="run-sig"),
    ])


def summary_rows(run: Run, steps: int | None) -> list[dict[str, Any]]:
    """Field / value rows from run.json and config.yaml."""
    g = run.config.get("gradprom") or {}
    d = run.config.get("data") or {}
    values = {**{k: g.get(k) for k in ("strategy", "tau", "lambda_e", "lambda_r", "granularity")},
              "task": run.config.get("task"), "data": d.get("source"), "degradation": d.get("degradation"),
              **{k: v for k, v in run.info.items() if v is not None}}
    values["length"] = duration(run.info)
    if steps is not None:
        values["steps"] = steps
    return [{"field": k, "value": cell(values.get(k))} for k in SUMMARY_KEYS if values.get(k) not in (None, "")]


def epoch_table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """epochs.parquet rows for the table, numbers rounded."""
    return [{k: cell(v) for k, v in r.items()} for r in rows]


def curves_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Loss, PSNR, SSIM and the task metric(s) per epoch."""
    if not rows:
        return message_figure("no epoch has finished yet")
    metrics = task_metrics(k for r in rows for k in r if r.get(k) is not None)
    fig = make_subplots(rows=1, cols=4, subplot_titles=["loss", "PSNR (dB)", "SSIM", " / ".join(metrics) or "task"])

    def add(col: int, split: str, key: str, **style: Any) -> None:
        pts = [(r["epoch"], r[key]) for r in rows if r.get("split") == split and r.get(key) is not None]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=f"{split} {key}",
                                     mode="lines+markers", **style), row=1, col=col)

    for split, dash_ in (("train", "solid"), ("val", "dot")):
        add(1, split, "loss_e", line={"dash": dash_, "color": "#1f77b4"})
        add(1, split, "loss_r", line={"dash": dash_, "color": "#d62728"})
    add(2, "val", "psnr", line={"color": "#2ca02c"})
    add(2, "val", "psnr_input", line={"dash": "dash", "color": "#999"})
    add(3, "val", "ssim", line={"color": "#2ca02c"})
    add(3, "val", "ssim_input", line={"dash": "dash", "color": "#999"})
    for m, color in zip(metrics, ("#9467bd", "#ff7f0e", "#17becf")):
        add(4, "val", m, line={"color": color})
    for col, key in ((2, "psnr"), (3, "ssim"), *((4, m) for m in metrics)):
        add(col, "test", key, marker={"symbol": "star", "size": 11, "color": "black"})
    fig.update_xaxes(title_text="epoch", **int_ticks(len({r.get("epoch") for r in rows})))
    fig.update_layout(template="plotly_white", height=330, uirevision="keep", margin={"t": 40, "b": 40})
    return fig


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


MARKERS = 800  # open / closed markers per state; every step is marked up to this many


def gate_figure(steps: pa.Table | None, tau: float | None, epochs: list[dict[str, Any]]) -> go.Figure:
    """Cosine per step with τ drawn and open/closed marked, the open rate, and ‖g_e‖, ‖g_r‖ (down-sampled)."""
    if steps is None or steps.num_rows == 0:
        return message_figure("no step rows yet")
    x = steps.column("step").to_numpy(zero_copy_only=False)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=["cos(g_e, g_r): open ● / closed ●, τ dashed", "gate-open rate",
                                        "‖g_e‖ and ‖g_r‖"])
    if "cos" in steps.column_names:
        cos = _np(steps, "cos")
        fig.add_trace(go.Scatter(x=downsample.minmax(x, cos)[0], y=downsample.minmax(x, cos)[1], mode="lines",
                                   name="cos", line={"color": "#bbb", "width": 1}), row=1, col=1)
        if "gate_open" in steps.column_names:
            g = _np(steps, "gate_open")
            for label, mask, color in (("open", g >= 0.5, "#2ca02c"), ("closed", g < 0.5, "#d62728")):
                # markers are SVG nodes (lines are one path each): at most ~800 per state keeps the page fast
                xs, ys = downsample.minmax(x[mask], cos[mask], MARKERS)
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=label,
                                           marker={"color": color, "size": 4}), row=1, col=1)
        if tau is not None:
            fig.add_hline(y=tau, line={"dash": "dash", "color": "black"}, row=1, col=1,
                          annotation_text=f"τ = {tau:g}", annotation_position="top left")
    if "gate_open" in steps.column_names:
        xs, ys = downsample.rolling_mean(x, _np(steps, "gate_open"))
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="open rate (window mean)",
                                   line={"color": "#2ca02c"}), row=2, col=1)
        pts = [(r["step"], r["gate_open_rate"]) for r in epochs
               if r.get("split") == "train" and num(r.get("gate_open_rate")) is not None and "step" in r]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers+lines",
                                     name="open rate per epoch", line={"color": "black", "dash": "dot"}),
                          row=2, col=1)
    for key, color in (("norm_ge", "#1f77b4"), ("norm_gr", "#d62728")):
        if key in steps.column_names:
            xs, ys = downsample.minmax(x, _np(steps, key))
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="‖g_e‖" if key == "norm_ge" else "‖g_r‖",
                                       line={"color": color, "width": 1}), row=3, col=1)
    fig.update_yaxes(range=[-1.05, 1.05], row=1, col=1)
    fig.update_yaxes(range=[-0.05, 1.05], row=2, col=1)
    fig.update_xaxes(title_text="step", row=3, col=1)
    fig.update_layout(template="plotly_white", height=620, uirevision="keep", margin={"t": 40})
    return fig


def heatmap_figure(steps: pa.Table | None) -> go.Figure | None:
    """Layer × step open (1) / closed (0), bucket means when long; None outside `layer` granularity."""
    if steps is None or "layer_open" not in steps.column_names:
        return None
    col = steps.column("layer_open")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) == 0 or lengths.min() != lengths.max() or lengths[0] == 0:
        return message_figure("layer gates of unequal length: heat map not drawn")
    m = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(lengths), lengths[0])
    starts, z = downsample.matrix_mean(m)
    x = steps.column("step").to_numpy(zero_copy_only=False)[starts]
    fig = go.Figure(go.Heatmap(z=z.T, x=x, y=[f"tensor {i}" for i in range(z.shape[1])], zmin=0, zmax=1,
                               colorscale=[[0, "#d62728"], [1, "#2ca02c"]],
                               colorbar={"title": "open"}))
    fig.update_layout(template="plotly_white", height=max(260, 18 * z.shape[1] + 100), uirevision="keep",
                      title="gate per parameter tensor (layer granularity): open = green, closed = red",
                      xaxis_title="step", margin={"t": 40})
    return fig


def samples(run: Run) -> Any:
    """The samples figure, served read-only from the run directory."""
    p = run.path / "figures" / "samples.png"
    if not p.is_file():
        return html.P("no samples figure yet (written after the first evaluation)")
    return html.Img(id="run-samples-img", src=file_url(run.id, "figures/samples.png", p.stat().st_mtime_ns),
                    style={"maxWidth": "100%"})


def tau_of(run: Run) -> float | None:
    """The gate threshold τ of the run (None when the strategy has none)."""
    g = run.config.get("gradprom") or {}
    return num(g.get("tau", run.info.get("tau")))


def exports(run: Run) -> html.Div | None:
    """Links to the models `gradprom export` wrote into <run>/exports/ (each beside its sidecar JSON)."""
    folder = run.path / "exports"
    sidecars = sorted(folder.glob("*.json")) if folder.is_dir() else []
    items = []
    for side in sidecars:
        model = side.with_suffix("")  # enhancer.onnx.json -> enhancer.onnx
        if not model.is_file():
            continue
        rel = f"exports/{model.name}"
        items.append(html.Li([html.A(model.name, href=file_url(run.id, rel, model.stat().st_mtime_ns),
                                     className="run-export"), " · ",
                              html.A("sidecar (preprocessing, versions)",
                                     href=file_url(run.id, f"exports/{side.name}", side.stat().st_mtime_ns))]))
    if not items:
        return None
    return html.Div([html.H4("Exported models"), html.Ul(items)], id="run-exports")


def render(run: Run) -> tuple:
    """Every output of the run page but the signature: tables, figures, samples, notices."""
    table, problems = read_table(run.path / "epochs.parquet")
    epochs = table.to_pylist() if table is not None else []
    steps, p2 = read_steps(run.path)
    problems = run.problems + problems + p2
    heat = heatmap_figure(steps)
    columns = [{"id": c, "name": c} for c in (table.column_names if table is not None else [])]
    return (summary_rows(run, steps.num_rows if steps is not None else None), epoch_table_rows(epochs), columns,
            curves_figure(epochs), gate_figure(steps, tau_of(run), epochs),
            heat if heat is not None else message_figure(""),
            {"display": "block" if heat is not None else "none"}, [samples(run), exports(run)],
            notice("run-notice", problems))


def register(app, root: Path) -> None:
    """Callbacks of the run page."""

    @app.callback(Output("run-summary", "data"), Output("run-epochs-table", "data"),
                  Output("run-epochs-table", "columns"), Output("run-curves", "figure"), Output("run-gate", "figure"),
                  Output("run-heatmap", "figure"), Output("run-heatmap-box", "style"),
                  Output("run-samples", "children"),
                  Output("run-notice", "children"), Output("run-sig", "data"),
                  Input("run-tick", "n_intervals"), State("run-id", "data"), State("run-sig", "data"))
    def refresh(_n, run_id, sig):
        run, new = changed_run(root, run_id, sig)
        if run is None:
            empty = message_figure("no such run")
            return [], [], [], empty, empty, empty, {"display": "none"}, None, notice("run-notice", [new]), "missing"
        with _LOCK:
            hit = _RENDERED.get(run.id)
        if hit is not None and hit[0] == new:  # another tab (or a reload) already built this state
            return hit[1]
        out = render(run) + (new,)
        with _LOCK:
            _RENDERED.pop(run.id, None)
            _RENDERED[run.id] = (new, out)
            while len(_RENDERED) > 16:
                _RENDERED.pop(next(iter(_RENDERED)))
        return out

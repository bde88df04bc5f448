"""Pieces every view shares: tables with stable ids, notices, number formatting, figure defaults."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import plotly.graph_objects as go
from dash import dcc, html

TASK_METRICS = ("accuracy", "auc", "dice")
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
DIGITS = 4  # every number on the page is rounded to this many decimals (the browser tests compare this)


def num(v: Any) -> float | None:
    """A finite float rounded for display, or None (shown as an empty cell)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, DIGITS) if math.isfinite(f) else None


def cell(v: Any) -> Any:
    """A value as a table cell: numbers rounded, lists and dicts as short text."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return v
    if isinstance(v, float):
        return num(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(str(cell(x)) for x in v) + "]"
    return str(v)


def data_table(id: str, rows: list[dict[str, Any]], columns: Iterable[str] | None = None, **kw: Any):
    """A Dash DataTable (real cells, stable id) over `rows`."""
    # DataTable is what Dash 4.4 ships (AG Grid is a separate package); it warns it may move in a future major
    from dash import dash_table

    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r if k != "id"))
    spec = [{"id": c, "name": c} for c in cols]
    for s in spec:
        if s["id"] in kw.get("markdown_columns", ()):
            s["presentation"] = "markdown"
    kw.pop("markdown_columns", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return dash_table.DataTable(
            id=id, data=rows, columns=spec, page_size=kw.pop("page_size", 25),
            style_table={"overflowX": "auto"}, style_cell={"fontFamily": "monospace", "fontSize": 13,
                                                           "padding": "2px 6px", "textAlign": "right"},
            style_header={"fontWeight": "bold"}, markdown_options={"link_target": "_self"}, **kw)


def notice(id: str, problems: list[str]) -> list:
    """Children of a notice box: one line per problem (empty when there are none)."""
    return [html.Div(p, className="notice-line") for p in problems]


def notice_box(id: str) -> html.Div:
    """A box that shows problems (corrupt tables, nothing found) in plain words."""
    return html.Div(id=id, className="notice", style={"color": "#8a4b00", "background": "#fff4e0",
                                                      "margin": "6px 0", "padding": "0 8px"})


def figure(**layout: Any) -> go.Figure:
    """An empty figure with the page's defaults; `uirevision` keeps the user's zoom across live updates."""
    fig = go.Figure()
    fig.update_layout(template="plotly_white", margin={"l": 50, "r": 20, "t": 40, "b": 40}, uirevision="keep",
                      **layout)
    return fig


def message_figure(text: str) -> go.Figure:
    """A figure that only says `text` (no data yet)."""
    fig = figure(height=160)
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def int_ticks(count: int) -> dict[str, Any]:
    """Axis settings for integer x values (epochs, rounds, trials): a tick on each up to 20, else Plotly's own."""
    return {"dtick": 1} if count <= 20 else {"tickformat": "d"}


def graph(id: str) -> dcc.Graph:
    """A Plotly graph (zoom and hover) with a stable id."""
    return dcc.Graph(id=id, figure=message_figure("loading…"), config={"displaylogo": False})


def parse_time(s: Any) -> datetime | None:
    """An ISO time stamp from run.json, or None."""
    if not s:
        return None
    try:
        t = datetime.fromisoformat(str(s))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def duration(info: dict[str, Any]) -> str:
    """How long a run took (or has been running): '1h 02m', '3m 05s', '12s'."""
    start, end = parse_time(info.get("start")), parse_time(info.get("end"))
    if start is None:
        return ""
    secs = int(((end or datetime.now(UTC)) - start).total_seconds())
    if secs >= 3600:
        return f"{secs // 3600}h {secs % 3600 // 60:02d}m"
    if secs >= 60:
        return f"{secs // 60}m {secs % 60:02d}s"
    return f"{max(secs, 0)}s"


def href(kind: str, run_id: str) -> str:
    """The page of a run: its kind decides the view."""
    view = {"tune": "tuning", "federated": "federation"}.get(kind, "run")
    return f"/{view}/{quote(run_id)}"


_MD_SPECIAL = set("\\`*_{}[]()<>#+-.!|~&")


def md_text(text: str) -> str:
    """`text` for a Markdown cell, every punctuation character Markdown could read as syntax backslash-escaped,
    so a run named `x](javascript:alert(1))[y` is shown exactly as it is named."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text).replace("\n", " "))


def md_link(text: str, url: str) -> str:
    """A Markdown link showing `text` verbatim; `url` must already be quoted (see href, file_url)."""
    return f"[{md_text(text)}]({url})"


def file_url(run_id: str, rel: str, version: int | None = None) -> str:
    """URL of a file inside a run directory (served read-only by the app)."""
    url = f"/files/{quote(run_id)}/{quote(rel)}"
    return url if version is None else f"{url}?v={version}"


def task_metrics(columns: Iterable[str]) -> list[str]:
    """The task metric columns present (accuracy and auc, or dice)."""
    cols = set(columns)
    return [m for m in TASK_METRICS if m in cols]


def column(table, name: str) -> list:
    """A column of a pyarrow table as a list ([] when absent)."""
    return table.column(name).to_pylist() if table is not None and name in table.column_names else []


def changed_run(root, run_id: str | None, sig: Any):
    """(run, new signature) for a page's refresh; (None, message) when `run_id` names no run under the runs
    directory. Raises PreventUpdate when none of the run's files changed since `sig`, so polling redraws nothing."""
    from dash.exceptions import PreventUpdate

    from ..discover import get_run, signature

    run = get_run(root, run_id or "")
    if run is None:
        return None, f"{run_id!r} is not a run directory under the runs directory."
    new = signature(run.path)
    if new == sig:
        raise PreventUpdate
    return run, new

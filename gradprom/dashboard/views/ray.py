"""The Ray view: the cluster's status (`ray status`) and a link to its Ray dashboard, when an address is known."""

from __future__ import annotations

from dash import html


def layout(address: str | None, interval_ms: int) -> html.Div:
    return html.Div([html.H2("Ray cluster"), html.P("not yet")])


def register(app, address: str | None) -> None:
    pass

"""The Ray view: when a Ray address is known (`--ray-address`), the cluster's status as `ray status` prints it
and a link to the cluster's own Ray dashboard."""

from __future__ import annotations

from dash import Input, Output, State, dcc, html

from .. import raystatus
from .common import notice, notice_box

POLL_MS = 2000  # the page reads the latest answer; a background thread asks the cluster (raystatus.status)


def layout(address: str | None, interval_ms: int) -> html.Div:
    """The page skeleton; without an address it says how to give one."""
    if not address:
        return html.Div([html.H2("Ray cluster"), notice_box("ray-notice"),
                         html.P("No Ray address is known: start the dashboard with --ray-address HOST:PORT (the "
                                "address `ray start --head` prints).", id="ray-none")])
    return html.Div([
        html.H2(f"Ray cluster at {address}"),
        notice_box("ray-notice"),
        html.Div(id="ray-link"),
        html.Pre(id="ray-status", children="asking the cluster…", style={"background": "#f6f6f6", "padding": "6px"}),
        dcc.Interval(id="ray-tick", interval=max(interval_ms, POLL_MS)),
        dcc.Store(id="ray-address", data=address),
    ])


def register(app, address: str | None) -> None:
    """Callbacks of the Ray page."""

    @app.callback(Output("ray-status", "children"), Output("ray-link", "children"), Output("ray-notice", "children"),
                  Input("ray-tick", "n_intervals"), State("ray-address", "data"))
    def refresh(_n, addr):
        info = raystatus.status(addr)
        if info is None:
            return "asking the cluster…", None, []
        if "error" in info:
            return "", None, notice("ray-notice", [f"Cannot read the Ray cluster at {addr}: {info['error']}"])
        url = info.get("dashboard_url")
        link = (html.A(f"Ray dashboard: {url}", href=url, id="ray-dashboard-link", target="_blank") if url
                else html.P("this cluster runs no Ray dashboard (started with --include-dashboard=false)"))
        return info.get("status", ""), link, []

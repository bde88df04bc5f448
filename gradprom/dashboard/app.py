"""The Dash app: one page per view, picked from the URL; every view polls its tables with dcc.Interval."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from dash import Dash, Input, Output, dcc, html

from . import files
from .views import federation, ray, run, runs, tuning
from .views.common import notice

ROUTES = {"run": run, "tuning": tuning, "federation": federation}


def build_app(root: str | Path, interval_s: float = 2.0, ray_address: str | None = None) -> Dash:
    """The dashboard over the runs directory `root` (read-only), polling every `interval_s` seconds."""
    root = Path(root).resolve()
    interval_ms = int(max(interval_s, 0.2) * 1000)
    app = Dash(__name__, title="GradProm dashboard", serve_locally=True, suppress_callback_exceptions=True,
               update_title=None, enable_mcp=False, compress=False)
    nav = [dcc.Link("Runs", href="/", id="nav-runs", style={"marginRight": "16px"})]
    if ray_address:
        nav.append(dcc.Link("Ray cluster", href="/ray", id="nav-ray"))
    app.layout = html.Div([
        dcc.Location(id="url"),
        html.Div([html.B("GradProm dashboard", style={"marginRight": "24px"}), *nav,
                  html.Span(f"runs: {root}", style={"float": "right", "color": "#666"})],
                 style={"borderBottom": "1px solid #ddd", "padding": "8px 0"}),
        html.Div(id="page"),
    ], style={"fontFamily": "sans-serif", "margin": "0 16px"})

    @app.callback(Output("page", "children"), Input("url", "pathname"))
    def route(pathname: str | None):
        path = unquote(pathname or "/")
        if path in ("/", ""):
            return runs.layout(interval_ms)
        if path.rstrip("/") == "/ray":
            return ray.layout(ray_address, interval_ms)
        view, _, run_id = path.lstrip("/").partition("/")
        if view in ROUTES and run_id:
            return ROUTES[view].layout(run_id.rstrip("/"), interval_ms)
        return html.Div([html.H2("Not found"), html.Div(notice("page-notice", [f"No page at {path!r}."]),
                                                        className="notice")])

    runs.register(app, root, interval_s)
    run.register(app, root)
    tuning.register(app, root)
    federation.register(app, root)
    ray.register(app, ray_address)
    files.register(app.server, root)
    return app

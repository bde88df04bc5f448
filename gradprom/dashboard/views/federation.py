"""stub"""
from dash import html

def layout(run_id, interval_ms):
    return html.Div("federation")

def register(app, root):
    pass

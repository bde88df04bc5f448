"""stub"""
from dash import html

def layout(run_id, interval_ms):
    return html.Div("tuning")

def register(app, root):
    pass

"""Federated GradProm on Flower: hospitals gate locally (or the server gates the federation's update), Flower's
strategies aggregate. `task.py` holds the ML and never imports flwr; the *_app.py files are Flower glue."""

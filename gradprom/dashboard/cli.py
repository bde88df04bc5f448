"""`gradprom dashboard`: serve the read-only monitoring page over a runs directory."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def register(sub) -> None:
    """Add the `dashboard` command to the main parser's sub-commands."""
    p = sub.add_parser("dashboard", help="serve a live, read-only web page over runs, tuning and federations",
                       description="Serve a read-only Dash page over the run directories under --runs: every "
                                   "run, one run's curves and gate, Ray Tune experiments, federations and (with "
                                   "--ray-address) the Ray cluster. It polls the tables every few seconds.")
    p.add_argument("--runs", default="runs", metavar="DIR", help="runs directory to watch (default: runs)")
    p.add_argument("--port", type=int, default=8050, help="port (default: 8050; 0 is not allowed)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; anything else exposes the "
                        "page to the network and prints a warning)")
    p.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="a Ray cluster's address (HOST:PORT of its GCS, as `ray start --head` prints) to show "
                        "its status and a link to its Ray dashboard")
    p.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                   help="how often the page polls the tables (default: 2)")
    p.set_defaults(func=cmd_dashboard)


def _check(args: argparse.Namespace) -> Path:
    from gradprom.platform.errors import ConfigError

    root = Path(args.runs)
    if not root.is_dir():
        raise ConfigError(f"--runs {args.runs!r}: no such directory. Pass the directory your runs are written "
                          f"to (`gradprom train --out DIR`, default runs/).")
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: must be between 1 and 65535.")
    if not 0.2 <= args.interval <= 3600:
        raise ConfigError(f"--interval {args.interval}: must be between 0.2 and 3600 seconds.")
    if args.host not in LOOPBACK:
        try:
            ipaddress.ip_address(args.host)
        except ValueError:
            raise ConfigError(f"--host {args.host!r}: not an IP address (e.g. 127.0.0.1, 0.0.0.0).") from None
    _check_port(args.host, args.port)
    return root


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is taken with one paragraph (Werkzeug would print its own text and exit 1)."""
    import socket

    from gradprom.platform.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({e.strerror}); another program "
                              f"uses it, so pass another --port.") from None


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Run the dashboard until interrupted."""
    root = _check(args)
    if args.host not in LOOPBACK:
        print(f"gradprom: warning: --host {args.host} exposes the dashboard (and every run's figures and "
              f"configs) to the network without authentication.", file=sys.stderr)
    from .app import build_app  # Dash and Plotly load only for this command

    app = build_app(root, interval_s=args.interval, ray_address=args.ray_address)
    quiet_logs(verbose=getattr(args, "verbose", False))
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"gradprom dashboard: serving {root.resolve()} at http://{shown}:{args.port}/ (Ctrl+C to stop)", flush=True)
    # Werkzeug's server directly: Dash's and Flask's run() print their own banners (Dash's line, Flask's app
    # name, debug mode), which say less than the line above
    from werkzeug.serving import run_simple

    app.enable_dev_tools(debug=False)
    run_simple(args.host, args.port, app.server, threaded=True)
    return 0


def quiet_logs(verbose: bool) -> None:
    """One line per poll is noise: Werkzeug's access log (and its start-up lines) only with -v."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.INFO if verbose else logging.WARNING)

"""`gradprom federate`: the federation as a Flower simulation on this machine (Ray backend).

`run_simulation` gives the apps an empty run config, so the resolved config travels in the app closures.
Ray is always a private local instance (`address: local`), never a cluster another process started.

Why `run_simulation` and not `flwr run` (Flower 1.42 marks the former deprecated): `flwr run` sends the app as a
FAB to a detached `flower-superlink --simulation` process (flwr/cli/run/, flwr/simulation/app.py), so the
ServerApp runs in another process that reads only `context.run_config` (strings), the console sees logs only
with `--stream`, Ctrl-C reaches the CLI and not the ServerApp (a stop is `flwr stop RUN_ID`), and Ray is started
by that process (`address: local` cannot be passed; RAY_ADDRESS=local in its environment). The run directory,
resume, fault injection and the between-rounds stop of `gradprom federate` depend on the ServerApp running in
this process; `flwr run .` with the module-level apps (client_app.app, server_app.app) is the supported way
for that runtime. Both paths end in the same `flwr.simulation.run_simulation._run_simulation`; the deprecation
banner is dropped from the console on purpose (runlog.py) and kept in log.txt.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

from gradprom.platform.errors import TrainingError
from gradprom.platform.rundir import RunDir

from .config import build_federation
from .runlog import federation_logging, ray_logging_level
from .strategy import STOP

log = logging.getLogger(__name__)


def _request_stop(signum, frame) -> None:
    log.warning("stopping after the current round (press Ctrl-C again to abort at once)")
    STOP.set()
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _no_client_tracebacks(record: logging.LogRecord) -> bool:
    """Drop Flower's multi-page Ray tracebacks of a failed ClientApp (shown with -v)."""
    msg = str(record.msg)
    return not any(t in msg for t in ("Traceback (most recent call last)", "ClientAppActor", "  File \"",
                                      "An exception was raised when processing a message"))


def _quiet_stop(default):
    """The ServerApp thread ends with FederationStopped on a requested stop: not worth a traceback."""
    def hook(args) -> None:
        if not isinstance(args.exc_value, KeyboardInterrupt):
            default(args)
    return hook


def simulate(raw: dict[str, Any], run_path: str | Path | None = None, resume: bool = False,
             verbose: bool | None = None) -> Path:
    """Run (or resume) the federation in a Flower simulation; returns the run directory (with log.txt).

    `verbose` (default: the root logger is at DEBUG, i.e. `gradprom -v`) shows Flower's and Ray's INFO lines."""
    # imported here: the CLI must not load flwr/ray at `gradprom --help`
    import ray  # noqa: F401  (its logger exists before runlog.py attaches log.txt to it)
    from flwr.simulation import run_simulation

    from .client_app import make_client_app
    from .server_app import make_server_app, preflight, run_path_for

    cfg, fed = build_federation(raw, source="federation config")
    path = Path(run_path) if run_path else run_path_for(raw)
    preflight(raw, path, resume)
    # ClientApps run in Ray actors: one torch thread each, so N actors share the cores without oversubscribing
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    num_cpus = fed.num_cpus or max(1, min(os.cpu_count() or 1, int(fed.hospitals * fed.cpus_per_client)))
    if verbose is None:
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    backend = {"client_resources": {"num_cpus": fed.cpus_per_client, "num_gpus": 0.0},
               "init_args": {"address": "local", "num_cpus": num_cpus, "include_dashboard": False,
                             "log_to_driver": False, "logging_level": ray_logging_level(verbose)}}
    raw = {**raw, "run": {**raw.get("run", {}), "name": path.name, "out": str(path.parent)}}
    flwr_log = logging.getLogger("flwr")
    propagate = flwr_log.propagate
    flwr_log.propagate = False  # Flower prints its own log lines; do not print them twice
    if not log.isEnabledFor(logging.DEBUG):  # a site's failure is one line in our log and the rounds table
        flwr_log.addFilter(_no_client_tracebacks)
    STOP.clear()
    # Ctrl-C / SIGTERM: finish the round in flight, keep its checkpoint, then stop (a second Ctrl-C aborts)
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    hook = threading.excepthook
    threading.excepthook = _quiet_stop(hook)
    try:
        with federation_logging(path, verbose):
            log.info("federation %s: %d hospitals, %d rounds, %s, gate level %s, dp %s (Flower simulation, "
                     "%d CPUs)", path, fed.hospitals, fed.rounds, fed.strategy, fed.gate_level, fed.dp, num_cpus)
            run_simulation(server_app=make_server_app(raw, path, resume), client_app=make_client_app(raw),
                           num_supernodes=fed.hospitals, backend_name="ray", backend_config=backend)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        threading.excepthook = hook
        flwr_log.propagate = propagate
        flwr_log.removeFilter(_no_client_tracebacks)
    info = RunDir(path).read_run()
    if info.get("status") == "stopped":
        raise KeyboardInterrupt(info.get("error"))
    if info.get("status") != "finished":
        err = info.get("error") or "the ServerApp stopped before writing its run directory (see the log above)"
        raise TrainingError(f"Federation {str(path)!r} did not finish: {err}")
    return path

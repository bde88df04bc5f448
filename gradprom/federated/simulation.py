"""`gradprom federate`: the federation on Flower's own simulation runtime on this machine (Ray backend).

The CLI checks the config, the run directory and the data first (clear errors before any process starts), then
runs the app with `flwr run --stream` on a private SuperLink in simulation mode (flower_runtime.py): the
ServerApp and the sites' ClientApps run in Flower's simulation process, which writes the run directory exactly
as a deployment does. Ray is always a private local instance (RAY_ADDRESS=local), never a cluster another
process started.

Ctrl-C (or SIGTERM) asks the ServerApp to stop after the round in flight (a `stop-requested` file in the run
directory, which the driver watches): its checkpoint is kept and the run is "stopped" with a resume hint. A second
Ctrl-C stops the SuperLink and every process it started at once.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from gradprom.platform.errors import TrainingError
from gradprom.platform.rundir import RunDir, now_iso

from .config import build_federation
from .driver import STOP_FILE
from .flower_runtime import APPS, flwr_run

log = logging.getLogger(__name__)


def ray_logging_level(verbose: bool) -> str:
    """`ray.init(logging_level=...)` for the simulation's private Ray instance."""
    return "INFO" if verbose else "WARNING"

# the ServerApp process may still be closing run.json when the stream ends
FINAL_STATUS_WAIT_S = 60.0


def simulate(raw: dict[str, Any], run_path: str | Path | None = None, resume: bool = False,
             verbose: bool | None = None, apps: tuple[str, str] = APPS) -> Path:
    """Run (or resume) the federation on Flower's simulation runtime; returns the run directory (with log.txt).

    `verbose` (default: the root logger is at DEBUG, i.e. `gradprom -v`) shows Flower's and Ray's INFO lines.
    `apps` (ServerApp, ClientApp as `module:attribute`): GradProm's, or wrappers of them that instrument a run."""
    from .server_app import preflight, run_path_for

    cfg, fed = build_federation(raw, source="federation config")
    path = Path(run_path) if run_path else run_path_for(raw)
    preflight(raw, path, resume)
    if verbose is None:
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    num_cpus = fed.num_cpus or max(1, min(os.cpu_count() or 1, fed.hospitals * fed.cpus_per_client))
    federation = {"num-supernodes": fed.hospitals, "backend": "ray", "client-resources-num-cpus": fed.cpus_per_client,
                  "client-resources-num-gpus": 0.0, "init-args-num-cpus": num_cpus,
                  "init-args-logging-level": ray_logging_level(verbose), "init-args-log-to-driver": verbose}
    raw = {**raw, "run": {**raw.get("run", {}), "name": path.name, "out": str(path.parent)}}
    # ClientApps run in Ray actors: one torch thread each, so N actors share the cores without oversubscribing
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "RAY_ADDRESS": "local",
           # Ray's start-up FutureWarning about accelerator env vars on zero-GPU actors: keep today's behaviour
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "PYTHONUNBUFFERED": "1"}
    stop_file = path / STOP_FILE
    stop_file.unlink(missing_ok=True)

    def request_stop(signum, frame) -> None:
        log.warning("stopping after the current round (press Ctrl-C again to abort at once)")
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.touch()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.default_int_handler)

    log.info("federation %s: %d hospitals, %d rounds, %s, gate level %s, dp %s (Flower simulation runtime, "
             "%d CPUs)", path, fed.hospitals, fed.rounds, fed.strategy, fed.gate_level, fed.dp, num_cpus)
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = flwr_run(raw, path, resume, federation, env, verbose, apps)
    except KeyboardInterrupt:  # the second Ctrl-C: flwr_run stopped the SuperLink and its processes
        run = RunDir(path)
        if run.read_run().get("status") == "running":
            run.write_run(status="stopped", end=now_iso(), error="aborted (a second Ctrl-C); continue it with "
                          f"`gradprom federate --resume {path}` from its last checkpointed round")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_file.unlink(missing_ok=True)
    run = RunDir(path)
    deadline = time.monotonic() + FINAL_STATUS_WAIT_S
    while run.read_run().get("status") == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    info = run.read_run()
    if info.get("status") == "stopped":
        raise KeyboardInterrupt(info.get("error"))
    if info.get("status") != "finished":
        err = info.get("error") or (f"`flwr run` exited with {rc} before the ServerApp finished its run directory "
                                    f"(see {path / 'log.txt'} and {path / 'flower-superlink.log'})")
        raise TrainingError(f"Federation {str(path)!r} did not finish: {err}")
    return path

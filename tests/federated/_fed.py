"""Shared pieces of the federated tests: tiny configs and an environment that keeps Flower and Ray private."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TINY: dict[str, Any] = {
    "data": {"num_train": 64, "num_val": 16, "num_test": 16, "image_size": 32, "batch_size": 8},
    "model": {"enhancer_channels": [8, 16], "recognizer_channels": [8, 16]},
}


def tiny(out: Path, name: str, **federated: Any) -> dict[str, Any]:
    """A tiny federation config (phantoms 32x32, small U-Nets) writing to out/name."""
    return {**TINY, "run": {"out": str(out), "name": name}, "federated": {"local_steps": 2, **federated}}


def private_env(tmp: Path) -> dict[str, str]:
    """Subprocess env: own FLWR_HOME, one torch thread, no Ray cluster of another test joined."""
    env = dict(os.environ)
    env.update(FLWR_HOME=str(tmp / "flwr-home"), OMP_NUM_THREADS="1", RAY_ADDRESS="local",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONUNBUFFERED="1")
    return env


def start_cli(args: list[str], tmp: Path, log_name: str):
    """Start `gradprom ARGS` in its own session (so the test can stop exactly it and its Ray children)."""
    import subprocess
    import sys

    log = open(tmp / f"{log_name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gradprom.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                            env=private_env(tmp), cwd=tmp, start_new_session=True)
    proc.log_path = tmp / f"{log_name}.log"  # type: ignore[attr-defined]
    return proc


def stop_group(proc) -> None:
    """Kill the process group the test started and every process the CLI started (its private SuperLink and what
    that started run in sessions of their own), if still there."""
    import signal

    from gradprom.federated.flower_runtime import descendants

    started = descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def run_cli(args: list[str], tmp: Path, log_name: str, timeout: float = 400) -> tuple[int, str]:
    """Run `gradprom ARGS` to completion; returns (exit code, combined output)."""
    import subprocess

    proc = start_cli(args, tmp, log_name)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = -1
    finally:
        stop_group(proc)
    return rc, proc.log_path.read_text()

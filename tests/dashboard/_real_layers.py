"""Tiny real runs of the federation and tuning layers (`gradprom federate`, `gradprom tune`) for the dashboard's
fixture: each CLI runs in its own session with a private Ray instance and Flower home, and its process group
(the CLI and the Ray processes it spawned) is killed after it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

TINY = {"task": "classification", "seed": 0,
        "data": {"num_train": 64, "num_val": 16, "num_test": 16, "image_size": 32, "batch_size": 16},
        "model": {"enhancer_channels": [8, 16], "recognizer_channels": [8, 16]},
        "optim": {"max_steps_per_epoch": 2}, "run": {"device": "cpu", "num_threads": 1}}


class _Cli:
    """`gradprom ARGS` started in its own session; `finish()` waits, then kills the group it started."""

    def __init__(self, args: list[str], tmp: Path, log: str):
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env.update(FLWR_HOME=str(tmp / "flwr-home"), RAY_ADDRESS="local", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONUNBUFFERED="1")
        self.args, self.log = args, tmp / f"{log}.log"
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "gradprom"), *args], cwd=tmp, env=env,
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def finish(self, timeout: float = 600) -> None:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = -1
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group it started (a federation stops its SuperLink)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
            self._out.close()
        if rc != 0:
            raise RuntimeError(f"gradprom {' '.join(self.args)} exited {rc}:\n{self.log.read_text()[-3000:]}")


def start_federate(root: Path, name: str, tmp: Path) -> _Cli:
    """2 hospitals × 2 rounds of `gradprom federate` (a Flower simulation on a private Ray instance)."""
    cfg = tmp / "fed.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "federated": {"local_steps": 2}}))
    return _Cli(["federate", "--config", str(cfg), "--hospitals", "2", "--rounds", "2", "--num-cpus", "2",
                 "--out", str(root), "--name", name], tmp, "federate")


def start_tune(root: Path, name: str, tmp: Path) -> _Cli:
    """3 trials × 2 epochs of `gradprom tune` on the Pareto objective (PSNR and the task metric)."""
    cfg = tmp / "tune.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "tune": {"num_trials": 3, "max_epochs": 2, "grace_period": 1,
                                                    "reduction_factor": 2, "max_concurrent": 1}}))
    return _Cli(["tune", "--config", str(cfg), "--objective", "pareto", "--num-cpus", "2", "--out", str(root),
                 "--name", name], tmp, "tune")


def run_both(root: Path, fed_name: str, tune_name: str, tmp: Path) -> None:
    """Run both at once: they mostly wait on Ray and Flower starting up, so together they take little longer
    than one."""
    clis = [start_federate(root, fed_name, tmp), start_tune(root, tune_name, tmp)]
    try:
        for c in clis:
            c.finish()
    finally:
        for c in clis:
            if c.proc.poll() is None:
                c.finish(timeout=0)

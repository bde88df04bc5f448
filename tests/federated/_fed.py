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

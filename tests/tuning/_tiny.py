"""Tiny search settings shared by the tuning tests: phantoms of 32 px, 64 training images, 2 steps an epoch."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent  # the venv's gradprom and ray commands


def tiny_base(task: str = "classification") -> dict[str, Any]:
    """A run config that trains in about a second per epoch on one CPU."""
    return {"task": task, "seed": 0,
            "data": {"num_train": 64, "num_val": 16, "num_test": 16, "image_size": 32, "batch_size": 16},
            "model": {"enhancer_channels": [8, 16], "recognizer_channels": [8, 16]},
            "optim": {"max_steps_per_epoch": 2},
            "run": {"device": "cpu", "flush_seconds": 0.5}}


def write_config(path: Path, task: str = "classification", **tune: Any) -> Path:
    """A config file with the tiny base and a `tune:` section (2 epochs, ASHA halving at epoch 1)."""
    raw = tiny_base(task)
    raw["tune"] = {"num_trials": 4, "max_epochs": 2, "grace_period": 1, "reduction_factor": 2,
                   "max_concurrent": 1, **tune}
    path.write_text(yaml.safe_dump(raw))
    return path


def env() -> dict[str, str]:
    """Subprocess environment: one torch thread, no stray Ray address."""
    e = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return e


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""The GradProm engine: gate, gradients, models, data, metrics, the training step and loop, checkpoints,
config. It imports neither Ray Tune nor Flower; distributed drivers plug in a reducer and call the same step.

The training step (and with it torch) is imported on first use, so commands that only need the errors or
the config (the dashboard, `--help`) start without paying torch's import.
"""

from __future__ import annotations

from typing import Any

from gradprom.platform.config import Config, build_config
from gradprom.platform.errors import ConfigError, DataError, GradPromError, TrainingError

__all__ = ["Config", "build_config", "ConfigError", "DataError", "GradPromError", "TrainingError", "StepResult",
           "TrainStep"]


def __getattr__(name: str) -> Any:
    if name in ("StepResult", "TrainStep"):
        from gradprom.platform import step
        return getattr(step, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

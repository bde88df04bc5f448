"""The GradProm engine: gate, gradients, models, data, metrics, the training step and loop, checkpoints,
config. It imports neither Ray Tune nor Flower; distributed drivers plug in a reducer and call the same step.

The gate lives in `strategies/gradprom.py`; each strategy is one module whose class carries its capabilities,
and `strategies/__init__.py` is the registry. The training step is `step.py` (one step for every driver).

The training step and the strategies (and with them torch) are imported on first use, so commands that only
need the errors or the config (the dashboard, `--help`) start without paying torch's import.
"""

from __future__ import annotations

from typing import Any

from gradprom.platform.config import Config, build_config
from gradprom.platform.errors import ConfigError, DataError, GradPromError, TrainingError

_STEP = ("StepResult", "TrainStep")
_STRATEGIES = ("Strategy", "GradProm", "Joint", "EnhanceOnly", "CosineWeighted", "PCGrad", "TorchJD", "make_strategy",
               "parse_strategy", "REGISTRY", "STRATEGY_NAMES", "STRATEGY_PRESETS")

__all__ = ["Config", "build_config", "ConfigError", "DataError", "GradPromError", "TrainingError", "StepResult",
           "TrainStep", "Strategy", "GradProm", "Joint", "EnhanceOnly", "CosineWeighted", "PCGrad", "TorchJD",
           "make_strategy", "parse_strategy", "REGISTRY", "STRATEGY_NAMES", "STRATEGY_PRESETS"]


def __getattr__(name: str) -> Any:
    if name in _STEP:
        from gradprom.platform import step
        return getattr(step, name)
    if name in _STRATEGIES:
        from gradprom.platform import strategies
        return getattr(strategies, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

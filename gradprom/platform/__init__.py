"""The GradProm engine: gate, gradients, models, data, metrics, the training step and loop, checkpoints,
config. It imports neither Ray Tune nor Flower; distributed drivers plug in a reducer and call the same step.
"""

from .config import Config, build_config
from .errors import ConfigError, DataError, GradPromError, TrainingError
from .step import StepResult, TrainStep

__all__ = ["Config", "build_config", "ConfigError", "DataError", "GradPromError", "TrainingError", "StepResult",
           "TrainStep"]

"""Console output of a search: GradProm's own line per trial by default, the libraries' logs with `-v`.

By default Ray's and Optuna's loggers are set to WARNING, Tune's reporter (the boxes per trial) is off
(`RunConfig(verbose=0)`) and Ray's FutureWarning about accelerator variables is hidden. Tune's newer output
engine prints its "Configuration for experiment" box and a TensorBoard tip pointing at Ray's temporary session
folder even at verbose 0 (ray/tune/tune.py, `air_progress_reporter.experiment_started`), so a quiet search uses
the older engine (`RAY_AIR_NEW_OUTPUT=0`, read by ray/tune/experimental/output.py), which is silent at 0.
Ray's advice to resume with `Tuner.restore` is always dropped: that path unpickles the experiment directory
(resume.py), and GradProm prints its own `--resume` command.
"""

from __future__ import annotations

import logging
import os
import warnings

# substrings of Ray Tune messages that are dropped: (always, unless verbose)
ALWAYS_DROPPED = ("Resume experiment with: Tuner.restore", "has been interrupted, but the most recent state")
QUIET_DROPPED = ("Trials did not complete",)
NEW_OUTPUT = "RAY_AIR_NEW_OUTPUT"
_saved_levels: dict[str, int] = {}  # Ray's own levels, restored for -v when an earlier search in this process was quiet


class _DropMessages(logging.Filter):
    def __init__(self, parts: tuple[str, ...]) -> None:
        super().__init__()
        self.parts = parts

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(p in msg for p in self.parts)


def configure(verbose: bool) -> int | None:
    """Set the libraries' log levels for a search; returns Tune's `RunConfig(verbose=...)` value."""
    import optuna

    tune_logger = logging.getLogger("ray.tune.tune")  # the module that logs the end-of-run advice
    for f in [f for f in tune_logger.filters if isinstance(f, _DropMessages)]:
        tune_logger.removeFilter(f)
    tune_logger.addFilter(_DropMessages(ALWAYS_DROPPED if verbose else ALWAYS_DROPPED + QUIET_DROPPED))
    if verbose:
        optuna.logging.set_verbosity(optuna.logging.INFO)
        for name, level in _saved_levels.items():
            logging.getLogger(name).setLevel(level)
        if _saved_levels.pop(NEW_OUTPUT, None) is not None:  # this module set it for an earlier, quiet search
            os.environ.pop(NEW_OUTPUT, None)
        return None  # Ray's default reporter
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hides "A new study created in RDB ..."
    for name in ["ray", *[n for n in logging.root.manager.loggerDict if n.startswith("ray.")]]:
        logger = logging.getLogger(name)
        if name == "ray" or logger.level != logging.NOTSET:  # Ray sets levels on a few of its loggers
            _saved_levels.setdefault(name, logger.level)
            logger.setLevel(logging.WARNING)
    if NEW_OUTPUT not in os.environ:
        os.environ[NEW_OUTPUT] = "0"
        _saved_levels[NEW_OUTPUT] = 0
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
    return 0

"""What a federation prints and what it writes to `<run>/log.txt`.

Flower logs every round's sampling, replies and aggregation at INFO (about 80 lines for one round) and Ray adds
its start-up banner; that is the detail one needs when something goes wrong, not on every run. So, unless the
CLI runs with `-v`, Flower's console handler shows warnings and errors only and Ray logs at WARNING, while
`<run>/log.txt` always gets every line at INFO (DEBUG with `-v`): ours, Flower's and the Ray driver's.

`run_simulation` is deprecated in Flower 1.42 (its banner names `flwr run`); `gradprom federate` still runs it
on purpose (see simulation.py), so that one banner is dropped from the console and kept in log.txt.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Flower's own console handler (flwr.supercore.logger.ConsoleHandler) prints this at WARNING on every call
DEPRECATION_BANNER = "The `run_simulation` function is deprecated"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _not_the_banner(record: logging.LogRecord) -> bool:
    return not any(DEPRECATION_BANNER in str(a) for a in (record.msg, *(record.args or ())))


def _no_traceback(record: logging.LogRecord) -> bool:
    """Flower logs a ClientApp's exception (a site's crash, or the Ctrl-C that stops a round) with its whole
    traceback at ERROR; the rounds table and GradProm's own line name the site and the reason, so the console
    drops the traceback (log.txt keeps it; -v shows it)."""
    return "Traceback (most recent call last)" not in record.getMessage()


def ray_logging_level(verbose: bool) -> str:
    """`ray.init(logging_level=...)` for the simulation's private Ray instance."""
    return "INFO" if verbose else "WARNING"


@contextmanager
def federation_logging(run_path: Path, verbose: bool) -> Iterator[Path]:
    """Quiet console (unless verbose) and every line in `<run_path>/log.txt`, for the span of the run."""
    from flwr.common.logger import update_console_handler

    run_path.mkdir(parents=True, exist_ok=True)
    path = run_path / "log.txt"
    # appended, not replaced: a resumed federation keeps the log of its earlier rounds
    file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    file_handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
    flwr_log, ray_log, root = logging.getLogger("flwr"), logging.getLogger("ray"), logging.getLogger()
    consoles = [h for h in flwr_log.handlers if type(h).__name__ == "ConsoleHandler"]
    before = [(h, h.level) for h in consoles]
    update_console_handler(level=logging.INFO if verbose else logging.WARNING, colored=_isatty())  # INFO: its default
    for h in consoles:
        h.addFilter(_not_the_banner)
        if not verbose:
            h.addFilter(_no_traceback)
    # the CLI's verbosity filter on the libraries' console handlers (platform/logs.py) follows this run's choice,
    # and is put back as it was afterwards
    from gradprom.platform.logs import ConsoleFilter, quiet_libraries, verbosity

    streams = [h for lg in (flwr_log, ray_log) for h in lg.handlers if isinstance(h, logging.StreamHandler)
               and not isinstance(h, logging.FileHandler)]
    saved_filters = {h: [f for f in h.filters if isinstance(f, ConsoleFilter)] for h in streams}
    quiet_libraries("verbose" if verbose else verbosity())
    # Ray's start-up FutureWarning about accelerator env vars on zero-GPU actors: keep today's behaviour, no warning
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # the root logger's level decides whether INFO records of gradprom.* reach log.txt at all
    root_level = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
        for h in root.handlers:  # -q keeps the console at warnings
            if h.level == logging.NOTSET:
                h.setLevel(root_level)
    # Flower's and Ray's loggers do not propagate to the root: they get the file handler themselves
    loggers = [root, *(lg for lg in (flwr_log, ray_log) if not lg.propagate)]
    for lg in loggers:
        lg.addHandler(file_handler)
    try:
        yield path
    finally:
        for lg in loggers:
            lg.removeHandler(file_handler)
        file_handler.close()
        root.setLevel(root_level)
        for h, level in before:
            h.setLevel(level)
            h.removeFilter(_not_the_banner)
            h.removeFilter(_no_traceback)
        for h, filters in saved_filters.items():
            for f in [f for f in h.filters if isinstance(f, ConsoleFilter)]:
                h.removeFilter(f)
            for f in filters:
                h.addFilter(f)


def _isatty() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False

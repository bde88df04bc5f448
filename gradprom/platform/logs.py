"""The verbosity contract, set up once by the CLI and re-applied inside Ray workers.

    default  GradProm's own INFO lines on the console; libraries (Ray, Ray Train/Data, torch, MONAI, matplotlib,
             Flower, werkzeug, Optuna) only from WARNING up
    -q       warnings and errors only
    -v       everything from DEBUG, libraries included

Whatever the console shows, a run's `<run>/log.txt` gets the full log (GradProm from DEBUG, libraries from INFO)
for the run's lifetime (`run_log`). Colour only when the console is a terminal. The level travels to Ray worker
processes in the GRADPROM_VERBOSITY environment variable (a local Ray instance inherits the driver's environment).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "GRADPROM_VERBOSITY"
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}
# loggers that install their own console handlers and do not propagate (so the root's filter never sees them)
SELF_HANDLED = ("ray", "ray.train", "ray.data", "ray.tune", "torch", "flwr", "werkzeug", "optuna")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_COLOURS = {logging.DEBUG: "\x1b[2m", logging.WARNING: "\x1b[33m", logging.ERROR: "\x1b[31m",
            logging.CRITICAL: "\x1b[1;31m"}


def verbosity() -> str:
    """The verbosity this process runs with: quiet, normal (the default) or verbose."""
    v = os.environ.get(ENV, "normal")
    return v if v in LEVELS else "normal"


def _own(name: str) -> bool:
    return name == "gradprom" or name.startswith("gradprom.") or name == "__main__"


class ConsoleFilter(logging.Filter):
    """What the console shows at a verbosity: quiet -> WARNING up; normal -> GradProm's INFO too, libraries from
    WARNING; verbose -> everything."""

    def __init__(self, level: str):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if self.level == "verbose" or record.levelno >= logging.WARNING:
            return True
        return self.level == "normal" and _own(record.name)


class FileFilter(logging.Filter):
    """The run log: GradProm from DEBUG, libraries from INFO (Ray Data's DEBUG chatter would drown it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.INFO or _own(record.name)


class ColourFormatter(logging.Formatter):
    """Level-coloured lines; used only when the stream is a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        colour = _COLOURS.get(record.levelno)
        return f"{colour}{text}\x1b[0m" if colour else text


def quiet_libraries(level: str | None = None, *, root: bool = False) -> None:
    """Filter the console handlers of the self-handled library loggers (and, in a Ray worker, the root's, which
    Ray Train shares with them) by the verbosity; their file handlers keep everything. Call again after
    importing such a library (Ray installs its handler on import)."""
    v = level or verbosity()
    loggers = [logging.getLogger(n) for n in SELF_HANDLED] + ([logging.getLogger()] if root else [])
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                for f in [f for f in h.filters if isinstance(f, ConsoleFilter)]:
                    h.removeFilter(f)
                h.addFilter(ConsoleFilter(v))


def file_handler(path: Path) -> logging.FileHandler:
    """An appending handler for a run's log.txt."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.addFilter(FileFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def setup_logging(level: str, stream=None) -> None:
    """The console handler of the `gradprom` command for `level` (quiet, normal or verbose)."""
    os.environ[ENV] = level
    stream = stream or sys.stderr
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_gradprom_console", False):
            root.removeHandler(h)
    root.setLevel(logging.DEBUG if level == "verbose" else logging.INFO)
    logging.getLogger("gradprom").setLevel(logging.DEBUG)  # the run log keeps GradProm's debug lines
    handler = logging.StreamHandler(stream)
    handler._gradprom_console = True  # type: ignore[attr-defined]
    handler.setLevel(LEVELS[level])
    handler.addFilter(ConsoleFilter(level))
    tty = hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")
    handler.setFormatter((ColourFormatter if tty else logging.Formatter)(FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    logging.captureWarnings(True)  # Python warnings through logging: on the console as WARNING, in the run log
    quiet_libraries(level)


@contextmanager
def run_log(run_dir: Path) -> Iterator[Path]:
    """Append the full log to `<run_dir>/log.txt` while the block runs."""
    path = Path(run_dir) / "log.txt"
    handler = file_handler(path)
    quiet_libraries()  # libraries imported since setup_logging (torch, Ray) installed their handlers on import
    root = logging.getLogger()
    root.addHandler(handler)
    # self-handled loggers that do not propagate get the file too (their console stays theirs)
    extra = [logging.getLogger(n) for n in SELF_HANDLED if not logging.getLogger(n).propagate]
    for lg in extra:
        lg.addHandler(handler)
    try:
        yield path
    finally:
        for lg in extra:
            lg.removeHandler(handler)
        root.removeHandler(handler)
        handler.close()

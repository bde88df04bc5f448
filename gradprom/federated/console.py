"""The console of a federation that `gradprom federate` started, set up inside Flower's simulation process.

Flower logs every round's sampling, replies and aggregation at INFO (about 80 lines for one round) and a
failed ClientApp with its multi-page Ray traceback at ERROR; that is the detail one needs when something goes
wrong, not on every run. So, unless the CLI runs with `-v`: GradProm's own lines, Flower's warnings and errors
without the tracebacks (the rounds table and GradProm's own line name the failed site and the reason). The run's
log.txt gets every line, tracebacks included (the run lifecycle's run_log).
"""

from __future__ import annotations

import logging
import threading

from gradprom.platform.logs import setup_logging, verbosity

_CLIENT_TRACEBACK = ("Traceback (most recent call last)", "ClientAppActor", "  File \"",
                     "An exception was raised when processing a message")


def _no_client_traceback(record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not any(t in msg for t in _CLIENT_TRACEBACK)


def _quiet_stop(default):
    """Flower runs the ServerApp in a thread, which ends with FederationStopped on a requested stop: the run
    directory says "stopped" and the CLI says so; not worth a traceback."""
    def hook(args) -> None:
        if not isinstance(args.exc_value, KeyboardInterrupt):
            default(args)
    return hook


def federation_console() -> None:
    """The CLI's verbosity contract (GRADPROM_VERBOSITY, inherited from `gradprom federate`) in this process."""
    level = verbosity()
    setup_logging(level)
    flwr = logging.getLogger("flwr")
    flwr.propagate = False  # Flower prints its own console lines; the root's console must not print them again
    threading.excepthook = _quiet_stop(threading.excepthook)
    if level != "verbose":
        for h in flwr.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.addFilter(_no_client_traceback)

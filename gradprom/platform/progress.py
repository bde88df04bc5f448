"""Training progress when nobody watches a terminal (nohup, CI, `> log`): tqdm turns itself off there, so a long
epoch would print nothing until it ends. `PlainProgress` logs one line every `every` steps (a fifth of the epoch
by default), or after `seconds` without a line, with step/total, s/step, the losses, cos and the gate-open rate."""

from __future__ import annotations

import logging
import math
import sys
import time

log = logging.getLogger("gradprom.progress")


def on_terminal() -> bool:
    """True when the progress bar's stream (stderr) is a terminal."""
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class PlainProgress:
    """Progress lines for one epoch of `total` steps."""

    def __init__(self, desc: str, total: int, every: int | None = None, seconds: float = 30.0):
        self.desc, self.total, self.seconds = desc, total, seconds
        self.every = every or max(1, math.ceil(total / 5))
        self.t0 = self.last = time.monotonic()
        self.done = 0
        self.gate_sum, self.gated = 0.0, 0

    def update(self, loss_e: float, loss_r: float, cos: float, gate_open: float) -> str | None:
        """Count one step; returns (and logs) the line when one is due."""
        self.done += 1
        if not math.isnan(gate_open):
            self.gate_sum += gate_open
            self.gated += 1
        now = time.monotonic()
        if not (self.done % self.every == 0 or self.done == self.total or now - self.last >= self.seconds):
            return None
        self.last = now
        gate = f"{self.gate_sum / self.gated:.2f}" if self.gated else "n/a"
        line = (f"{self.desc} step {self.done}/{self.total}  {(now - self.t0) / self.done:.2f} s/step  "
                f"loss_e {loss_e:.4f}  loss_r {loss_r:.3f}  cos {cos:+.2f}  gate-open {gate}")
        log.info("%s", line)
        return line

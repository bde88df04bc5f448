"""Optional TensorBoard mirror of a run's tables (`run.tensorboard: true`): the step rows as `step/<column>` and the
epoch rows as `<split>/<metric>`, all against the optimizer step, in event files under `<run>/tensorboard/`
(tensorboardX, no TensorFlow). The Parquet tables stay the record; this is for people who already have
`tensorboard --logdir runs` open. A resumed run purges the events after its checkpoint's step, so the curves do
not double back."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TB_DIR = "tensorboard"
_SKIP = {"step", "epoch", "split", "time", "skipped"}


class TensorBoardMirror:
    """Scalars of step and epoch rows into `<run>/tensorboard/`; the writer opens at the first row."""

    def __init__(self, run_path: Path):
        self.path = Path(run_path) / TB_DIR
        self.purge_step: int | None = None  # set on resume: events after it are dropped by TensorBoard
        self._writer = None

    def _w(self):
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=str(self.path), purge_step=self.purge_step, flush_secs=30)
        return self._writer

    def _scalars(self, prefix: str, row: dict[str, Any], step: int) -> None:
        w = self._w()
        for key, v in row.items():
            if key in _SKIP or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            if math.isfinite(v):  # NaN (no gate, no AUC) has no point on a curve
                w.add_scalar(f"{prefix}/{key}", float(v), step)

    def step(self, row: dict[str, Any]) -> None:
        """One step row (its own `step` column is the x value)."""
        self._scalars("step", row, int(row["step"]))

    def epoch(self, row: dict[str, Any]) -> None:
        """One epoch row (train, val or test), at the optimizer step it was taken at; also `epoch` (1-based)."""
        self._scalars(row["split"], row, int(row["step"]))
        if row["split"] == "val":
            self._w().add_scalar("epoch", int(row["epoch"]) + 1, int(row["step"]))
        self._w().flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

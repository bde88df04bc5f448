"""The run directory (DESIGN.md §4), the contract between drivers, the dashboard, the report and the tests.

<runs>/<name>/
  run.json         kind, status (running | finished | failed | stopped), start/end, seed, versions, error
  config.yaml      the resolved config; `gradprom train --config` re-runs it
  steps/           Parquet part files part-<first>-<last>.parquet, one row per step, flushed every few seconds
  epochs.parquet   one row per epoch x split
  checkpoints/     latest.pt and best.pt
  figures/         samples.png and curves.png
Every file is written atomically (temp + rename), so a live reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import platform as _stdlib_platform
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gradprom.platform.atomic import atomic_path, atomic_write_text
from gradprom.platform.errors import DataError

log = logging.getLogger(__name__)
RUN_STATUSES = ("running", "finished", "failed", "stopped")
_VERSIONED = ("gradprom", "torch", "monai", "torchmetrics", "torchjd", "pyarrow", "numpy")


def versions() -> dict[str, str]:
    """Versions of Python and the packages that decide a run's numbers."""
    out = {"python": _stdlib_platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def now_iso() -> str:
    """UTC time stamp, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.steps = self.path / "steps"
        self.checkpoints = self.path / "checkpoints"
        self.figures = self.path / "figures"
        self.run_json = self.path / "run.json"
        self.config_yaml = self.path / "config.yaml"
        self.epochs_parquet = self.path / "epochs.parquet"

    def create(self) -> None:
        """Make the directory tree."""
        for d in (self.path, self.steps, self.checkpoints, self.figures):
            d.mkdir(parents=True, exist_ok=True)

    def exists(self) -> bool:
        """A run was started here."""
        return self.run_json.is_file()

    def read_run(self) -> dict[str, Any]:
        """run.json as a dict ({} when absent)."""
        if not self.run_json.is_file():
            return {}
        try:
            info = json.loads(self.run_json.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{str(self.run_json)!r} is damaged ({type(e).__name__}: {str(e)[:120]}); `gradprom train "
                            f"--resume` rewrites it (keeping the damaged copy beside it).") from None
        if not isinstance(info, dict):
            raise DataError(f"{str(self.run_json)!r} is damaged (it holds a {type(info).__name__}, not an object); "
                            f"`gradprom train --resume` rewrites it (keeping the damaged copy beside it).")
        return info

    def set_aside_damaged_run_json(self) -> Path | None:
        """Move an unreadable run.json to run.json.damaged (a resumed run then writes a new one); returns where
        it went, or None when run.json is fine or absent. Its status and start time are lost; every other field
        is rewritten by the resumed run."""
        try:
            self.read_run()
            return None
        except DataError:
            aside = self.run_json.with_name("run.json.damaged")
            self.run_json.replace(aside)
            log.warning("%s was damaged: moved it to %s and writing a new one (the original start time is lost)",
                        self.run_json, aside.name)
            return aside

    def write_run(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` into run.json and rewrite it atomically."""
        info = self.read_run()
        info.update(fields)
        atomic_write_text(self.run_json, json.dumps(info, indent=2, default=str) + "\n")
        return info

    def latest_checkpoint(self) -> Path:
        return self.checkpoints / "latest.pt"

    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    # ---- tables ------------------------------------------------------------------------------------
    def write_epochs(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite epochs.parquet with all rows so far (small: one row per epoch x split)."""
        write_parquet(self.epochs_parquet, rows)

    def read_epochs(self) -> list[dict[str, Any]]:
        """Rows of epochs.parquet ([] when absent)."""
        if not self.epochs_parquet.is_file():
            return []
        try:
            return pq.read_table(self.epochs_parquet).to_pylist()
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{str(self.epochs_parquet)!r} is damaged ({type(e).__name__}: {str(e)[:120]}); its epoch "
                            f"rows cannot be recovered from the checkpoints. To go on without the rows of the epochs "
                            f"run so far, move it away (e.g. to epochs.parquet.damaged) and resume again.") from None

    def read_steps(self) -> pa.Table | None:
        """All step rows, ordered by step (None when there are none)."""
        parts = step_parts(self.steps)
        if not parts:
            return None
        tables = [pq.read_table(p) for p in parts]
        return pa.concat_tables(tables, promote_options="default").sort_by("step")

    def truncate_steps(self, after_step: int) -> None:
        """Drop step rows past `after_step` (a resumed run replays them from its checkpoint)."""
        for p in step_parts(self.steps):
            first, last = _part_range(p)
            if first > after_step:
                p.unlink()
            elif last > after_step:
                t = pq.read_table(p)
                t = t.filter(pc.less_equal(t["step"], after_step))
                write_parquet(self.steps / _part_name(first, after_step), t)
                p.unlink()


def write_parquet(path: Path, rows: list[dict[str, Any]] | pa.Table) -> None:
    """Write rows (or a table) to a Parquet file atomically. Columns are the union of the rows' keys (a row
    without a key gets null there); `pa.Table.from_pylist` alone would keep only the first row's keys."""
    if isinstance(rows, pa.Table):
        table = rows
    else:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        table = pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def step_parts(steps_dir: Path) -> list[Path]:
    """Finished part files, in step order (temp files start with '.' and are skipped)."""
    if not steps_dir.is_dir():
        return []
    return sorted(p for p in steps_dir.glob("part-*.parquet") if not p.name.startswith("."))


def _part_name(first: int, last: int) -> str:
    return f"part-{first:09d}-{last:09d}.parquet"


def _part_range(p: Path) -> tuple[int, int]:
    _, a, b = p.stem.split("-")
    return int(a), int(b)


class StepWriter:
    """Buffer step rows and flush them as a new part file every `flush_seconds` (and on `flush()`)."""

    def __init__(self, steps_dir: Path, flush_seconds: float = 5.0):
        self.dir = steps_dir
        self.flush_seconds = flush_seconds
        self.rows: list[dict[str, Any]] = []
        self._last = time.monotonic()

    def append(self, row: dict[str, Any]) -> None:
        """Add one row (must hold `step`); flushes when the interval has passed."""
        self.rows.append(row)
        if time.monotonic() - self._last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as one part file."""
        self._last = time.monotonic()
        if not self.rows:
            return
        first, last = self.rows[0]["step"], self.rows[-1]["step"]
        write_parquet(self.dir / _part_name(first, last), self.rows)
        self.rows = []

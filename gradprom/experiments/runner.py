"""Run the grid: the frozen judges, every cell (reusing finished ones), the reference rows, the results table."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gradprom.platform.atomic import atomic_write_text
from gradprom.platform.build import resolve_device
from gradprom.platform.rundir import write_parquet

from .cells import cell_done, evaluate_references, run_cell
from .frozen import ensure_frozen_recognizer, frozen_path
from .grid import PRESETS, GridSpec

log = logging.getLogger(__name__)


def run_grid(spec: GridSpec, out: Path, progress: bool = True) -> list[dict[str, Any]]:
    """Run every cell of `spec` under `out`; returns the results rows (also written to results.parquet)."""
    spec.validate()
    out.mkdir(parents=True, exist_ok=True)
    runs, judges = out / "runs", out / "frozen"
    device = resolve_device(spec.device)
    preset = PRESETS[spec.preset]
    atomic_write_text(out / "experiment.json", json.dumps(spec.__dict__, indent=2) + "\n")
    cells = spec.cells()
    todo = sum(not cell_done(runs / c.id) for c in cells)
    log.info("experiment: %d cells (%d to run, %d reused) in %s", len(cells), todo, len(cells) - todo, out)

    # the independent judges, trained once per task on clean images
    for task in spec.tasks:
        first = next(c for c in cells if c.task == task)
        ensure_frozen_recognizer(spec.cell_config(first, str(runs)), judges, preset.frozen_epochs, device)

    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    # the per-cell line below replaces each run's per-epoch log lines (126 cells x 6 epochs is noise)
    loop_log = logging.getLogger("gradprom.platform.epoch")
    level = loop_log.level
    loop_log.setLevel(max(level, logging.WARNING))
    bar = tqdm(cells, desc="experiment", disable=None if progress else True, dynamic_ncols=True)
    for i, cell in enumerate(bar, 1):
        bar.set_postfix_str(cell.id)
        raw = spec.cell_config(cell, str(runs))
        reused = cell_done(runs / cell.id)
        row = run_cell(cell, raw, runs / cell.id, frozen_path(judges, cell.task), device)
        rows.append(row)
        # one line per cell, so a grid whose output is not a terminal (no bar) still shows progress
        log.info("cell %d/%d %s %s: psnr %.2f dB, task %.3f (frozen judge), %.0f s elapsed", i, len(cells), cell.id,
                 "reused" if reused else "trained", row["psnr"], row["task_frozen"], time.monotonic() - t0)
    bar.close()
    loop_log.setLevel(level)

    # the degraded input and the clean images through the same judge, per (task, degradation, seed)
    groups = sorted({(c.task, c.degradation, c.seed) for c in cells})
    for task, deg, seed in groups:
        cell = next(c for c in cells if (c.task, c.degradation, c.seed) == (task, deg, seed))
        for ref in evaluate_references(spec.cell_config(cell, str(runs)), frozen_path(judges, task), device):
            rows.append({"task": task, "degradation": deg, "seed": seed, "cell": None, **ref})
    write_parquet(out / "results.parquet", rows)
    log.info("experiment finished in %.0f s: %s", time.monotonic() - t0, out / "results.parquet")
    return rows

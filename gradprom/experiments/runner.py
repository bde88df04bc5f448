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

    # the independent judges, trained once per task on clean images; the warm start of the cells' R
    for task in spec.tasks:
        first = next(c for c in cells if c.task == task)
        ensure_frozen_recognizer(spec.cell_config(first, str(runs)), judges, preset.frozen_epochs, device)
        if preset.warm_start_epochs:
            ensure_frozen_recognizer(spec.cell_config(first, str(runs)), judges, preset.warm_start_epochs, device,
                                     role="warm")
    if preset.lambda_r_target_ratio is not None:
        spec.lambda_r = calibrate_lambda_r(spec, out)
        atomic_write_text(out / "experiment.json", json.dumps(spec.__dict__, indent=2) + "\n")

    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    # the per-cell line below replaces each run's per-epoch log lines (126 cells x 6 epochs is noise)
    loop_log = logging.getLogger("gradprom.platform.epoch")
    level = loop_log.level
    loop_log.setLevel(max(level, logging.WARNING))
    try:
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
    finally:  # an interrupted grid (Ctrl-C, SIGTERM) must not leave the epoch log muted in this process
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


def calibrate_lambda_r(spec: GridSpec, out: Path) -> dict[str, float]:
    """lambda_r per task by the preset's rule: target ratio / median ‖g_r‖/‖g_e‖ of a pilot at lambda_r = 1.

    The pilot is one joint cell of seed 0 on the first degradation, trained for the preset's pilot_epochs on
    the training split; only its step norms are read (no validation or test score enters the rule). The
    result is kept in pilot.json and reused by a rerun."""
    from gradprom.platform.config import build_config
    from gradprom.platform.loop import train
    from gradprom.platform.rundir import RunDir

    from .cells import gate_stats
    from .grid import Cell

    preset = PRESETS[spec.preset]
    path = out / "pilot.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    for task in spec.tasks:
        if task in known and known[task].get("target_ratio") == preset.lambda_r_target_ratio:
            continue
        cell = Cell(task, spec.degradations[0], "joint", 0)
        raw = spec.cell_config(cell, str(out / "pilot"))
        raw["gradprom"]["lambda_r"] = 1.0
        raw["optim"]["epochs"] = preset.pilot_epochs
        raw["run"]["name"] = f"pilot-{task}"
        run = out / "pilot" / f"pilot-{task}"
        if not (run / "run.json").is_file() or RunDir(run).read_run().get("status") != "finished":
            train(build_config(raw, source=f"experiment pilot ({task})"), resume=RunDir(run).exists(),
                  run_path=run, progress=False, kind="experiment")
        ratio = gate_stats(run)["norm_ratio_median"]
        known[task] = {"median_norm_ratio_at_lambda_1": ratio, "target_ratio": preset.lambda_r_target_ratio,
                       "lambda_r": preset.lambda_r_target_ratio / ratio, "pilot": str(run.relative_to(out)),
                       "rule": "lambda_r = target / median(|g_r|/|g_e|) at lambda_r = 1, pilot on the training split"}
        log.info("pilot %s: median |g_r|/|g_e| %.3g at lambda_r 1 -> lambda_r %.3g", task, ratio,
                 known[task]["lambda_r"])
    atomic_write_text(path, json.dumps(known, indent=2) + "\n")
    return {t: float(known[t]["lambda_r"]) for t in spec.tasks}

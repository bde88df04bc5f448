"""What does one cell of the medium evidence grid cost, and how long will the whole grid take?

Trains a few steps of a quick-preset cell and of each medium-preset arm, interleaved round-robin in one
process, and prints seconds per optimizer step, the ratio medium/quick, and the projected wall time of the
default medium grid (cells x steps x s/step, plus the measured evaluation of 256 test images per cell).
The evidence audit measured the quick preset at 0.088 s per step on 2 idle cores; on a busy machine the
ratio is the number to trust, and `--quick-step 0.088` projects from it.

Usage: python benchmarks/experiment_cost.py [--steps 20] [--repeats 2] [--quick-step 0.088]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gradprom.experiments.grid import PRESETS, Cell, GridSpec
from gradprom.platform.config import build_config
from gradprom.platform.loop import train


def _time_cell(spec: GridSpec, cell: Cell, steps: int, root: Path, tag: str) -> float:
    raw = spec.cell_config(cell, str(root))
    raw["gradprom"].pop("recognizer_checkpoint", None)  # a warm start changes the weights, not the cost
    raw["optim"] = {**raw["optim"], "epochs": 1, "max_steps_per_epoch": steps}
    raw["data"] = {**raw["data"], "num_test": 16, "num_val": 16}
    raw["run"] = {**raw["run"], "name": f"{tag}-{time.monotonic_ns()}"}
    cfg = build_config(raw, source="benchmark")
    t0 = time.perf_counter()
    train(cfg, progress=False)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick-step", type=float, default=0.088, help="s/step of the quick preset on the target "
                    "machine (the audit's idle 2-core figure)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    medium = GridSpec.for_preset("medium")
    quick = GridSpec(preset="quick", strategies=["gradprom"], tasks=["classification"], degradations=["gaussian"])
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for _ in range(a.repeats):
            times.setdefault("quick gradprom", []).append(
                _time_cell(quick, Cell("classification", "gaussian", "gradprom", 0), a.steps, root, "q"))
            for s in medium.strategies:
                times.setdefault(s, []).append(
                    _time_cell(medium, Cell("classification", "gaussian", s, 0), a.steps, root, s))
    q = statistics.median(times["quick gradprom"])
    p = PRESETS["medium"]
    steps_per_cell = p.epochs * (p.num_train // p.batch_size)
    n_cells = len(medium.cells())
    print(f"{'arm':<22}{'s/step here':>12}{'x quick':>9}")
    print(f"{'quick gradprom':<22}{q:>12.3f}{1.0:>9.2f}")
    ratios = []
    for s in medium.strategies:
        t = statistics.median(times[s])
        ratios.append(t / q)
        print(f"{s:<22}{t:>12.3f}{t / q:>9.2f}")
    mean_ratio = statistics.mean(ratios)
    per_cell = steps_per_cell * a.quick_step * mean_ratio
    print(f"\nmedium grid: {n_cells} cells x {steps_per_cell} steps; at {a.quick_step} s/step for quick: "
          f"{per_cell:.0f} s per cell (steps, with this run's per-epoch overhead), "
          f"{n_cells * per_cell / 60:.0f} min for the cells")


if __name__ == "__main__":
    main()

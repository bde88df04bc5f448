"""Paired comparisons: the same test images, enhanced by two strategies trained on the same data and seed.

For each (task, degradation) and metric, the per-image differences (GradProm minus baseline) are pooled over
seeds and tested with the Wilcoxon signed-rank test (two-sided; SciPy). Each seed's mean difference is
also reported, so a result carried by one seed shows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from .cells import read_per_image


def paired(runs: Path, task: str, degradation: str, a: str, b: str, seeds: list[int], metric: str) -> dict:
    """Mean of (a - b) per image over all seeds, Wilcoxon p-value, and per-seed means."""
    diffs, per_seed = [], []
    for seed in seeds:
        da = runs / f"{task}-{degradation}-{a}-s{seed}"
        db = runs / f"{task}-{degradation}-{b}-s{seed}"
        if not (da / "per_image.parquet").is_file() or not (db / "per_image.parquet").is_file():
            continue
        xa, xb = read_per_image(da), read_per_image(db)
        if not np.array_equal(xa["index"], xb["index"]):
            raise ValueError(f"{da} and {db} were evaluated on different test images")
        d = xa[metric] - xb[metric]
        d = d[np.isfinite(d)]
        diffs.append(d)
        per_seed.append(float(d.mean()) if d.size else math.nan)
    if not diffs:
        return {"mean_diff": math.nan, "p": math.nan, "n": 0, "per_seed": []}
    d = np.concatenate(diffs)
    if d.size == 0 or np.all(d == 0):
        p = 1.0
    else:
        p = float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return {"mean_diff": float(d.mean()), "p": p, "n": int(d.size), "per_seed": per_seed}

"""Statistics with the training run as the unit of replication.

The per-image differences of one seed share one pair of trained models, so they are not independent
replicates of the *training procedure*: the seed is the unit. Everything here starts from one array of
per-image values (or differences) per seed:
  - per-seed means, and their SD across seeds (what "±" means in the report);
  - an exact sign-flip test on the per-seed mean differences (all 2^n sign patterns; two-sided), so with
    n seeds the smallest attainable p is 2/2^n (2/64 for 6 seeds, 0.25 for 3);
  - a hierarchical bootstrap 95% CI (resample seeds with replacement, then images within each drawn seed;
    statistic: the mean of the per-seed means; seeded, so a report is reproducible);
  - non-inferiority for "keeps quality": the one-sided 95% upper bound of the loss (Student t on the
    per-seed mean differences, df = n - 1) must lie below the margin; non-significance is not enough;
  - a task margin tied to the judge: max(10% of its headroom clean - degraded, 2 standard errors);
  - Benjamini-Hochberg q-values across a report's comparisons (scipy.stats.false_discovery_control).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

QUALITY_MARGIN_DB = 0.1  # a PSNR loss below this is negligible
CI_LEVEL = 0.95
N_BOOT = 2000
HEADROOM_SHARE = 0.1  # the task margin is at least this share of the judge's headroom (clean - degraded)


def seed_means(per_seed: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of each seed's finite values (NaN for a seed without any)."""
    out = []
    for v in per_seed:
        v = np.asarray(v, dtype=float)
        v = v[np.isfinite(v)]
        out.append(float(v.mean()) if v.size else math.nan)
    return np.asarray(out, dtype=float)


def seed_sd(means: np.ndarray) -> float:
    """SD of per-seed means across seeds (ddof = 1); NaN for fewer than two seeds."""
    m = np.asarray(means, dtype=float)
    m = m[np.isfinite(m)]
    return float(m.std(ddof=1)) if m.size >= 2 else math.nan


def sign_flip_p(d: Sequence[float]) -> float:
    """Exact two-sided sign-flip p-value of mean(d) = 0 over all 2^n sign patterns of the per-seed values."""
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    n = d.size
    if n == 0:
        return math.nan
    if n > 20:  # 2^20 patterns is the most we enumerate; beyond that the t-test is a fine approximation
        return float(stats.ttest_1samp(d, 0.0).pvalue)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    observed = abs(d.sum())
    flipped = np.abs(signs @ d)
    return float(np.mean(flipped >= observed - 1e-12 * max(1.0, observed)))


def min_sign_flip_p(n_seeds: int) -> float:
    """The smallest p-value the exact sign-flip test can give with n seeds: 2 / 2^n."""
    return 2.0 / 2 ** n_seeds


def hierarchical_ci(per_seed: Sequence[np.ndarray], level: float = CI_LEVEL, n_boot: int = N_BOOT,
                    seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the mean of per-seed means: resample seeds, then images within each drawn seed."""
    groups = [np.asarray(v, dtype=float)[np.isfinite(np.asarray(v, dtype=float))] for v in per_seed]
    groups = [g for g in groups if g.size]
    if not groups:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    k = len(groups)
    est = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, k, size=k)
        est[b] = np.mean([groups[i][rng.integers(0, groups[i].size, size=groups[i].size)].mean() for i in picked])
    a = (1.0 - level) / 2
    return float(np.quantile(est, a)), float(np.quantile(est, 1 - a))


def t_bound(means: Sequence[float], side: str, level: float = CI_LEVEL) -> float:
    """One-sided Student-t bound of the mean of per-seed values ('upper' or 'lower'); NaN below two seeds."""
    m = np.asarray(means, dtype=float)
    m = m[np.isfinite(m)]
    if m.size < 2:
        return math.nan
    half = stats.t.ppf(level, df=m.size - 1) * m.std(ddof=1) / math.sqrt(m.size)
    return float(m.mean() + half) if side == "upper" else float(m.mean() - half)


def non_inferior(diff_means: Sequence[float], margin: float = QUALITY_MARGIN_DB) -> tuple[bool, float]:
    """Is `a` non-inferior to `b` (diff = a - b per seed)? (verdict, upper bound of the loss b - a).

    One-sided 95% upper bound of the loss, Student t on per-seed mean differences; the verdict is
    bound < margin. Fewer than two seeds give (False, NaN): nothing can be shown."""
    loss = -np.asarray(diff_means, dtype=float)
    upper = t_bound(loss, "upper")
    return (bool(np.isfinite(upper) and upper < margin), upper)


def standard_error(per_seed: Sequence[np.ndarray]) -> float:
    """Standard error of a score's mean: across seeds when there are two or more, else across images."""
    means = seed_means(per_seed)
    finite = means[np.isfinite(means)]
    if finite.size >= 2:
        return float(finite.std(ddof=1) / math.sqrt(finite.size))
    v = np.concatenate([np.asarray(x, dtype=float) for x in per_seed]) if len(per_seed) else np.array([])
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size >= 2 else math.nan


def task_margin(clean: float, degraded: float, se: float) -> float:
    """The smallest task difference worth the name: max(10% of the judge's headroom, 2 SE)."""
    parts = [x for x in (HEADROOM_SHARE * (clean - degraded), 2.0 * se) if np.isfinite(x)]
    return float(max(parts)) if parts else math.nan


def bh_qvalues(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values over the finite entries (NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=float)
    q = np.full(p.shape, math.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = stats.false_discovery_control(p[ok], method="bh")
    return q


def compare(a: Sequence[np.ndarray], b: Sequence[np.ndarray], seed: int = 0) -> dict:
    """Paired comparison a - b of per-image values, one array per seed (the same images in a and b).

    Returns the mean of per-seed mean differences, their seed SD, the per-seed differences, the
    hierarchical bootstrap 95% CI, the exact sign-flip p and the number of seeds."""
    diffs = []
    for xa, xb in zip(a, b):
        xa, xb = np.asarray(xa, dtype=float), np.asarray(xb, dtype=float)
        if xa.shape != xb.shape:
            raise ValueError(f"paired arrays of different lengths: {xa.shape} vs {xb.shape}")
        diffs.append(xa - xb)
    per_seed = seed_means(diffs)
    finite = per_seed[np.isfinite(per_seed)]
    lo, hi = hierarchical_ci(diffs, seed=seed)
    return {"mean": float(finite.mean()) if finite.size else math.nan, "seed_sd": seed_sd(per_seed),
            "per_seed": per_seed.tolist(), "ci_lo": lo, "ci_hi": hi, "p": sign_flip_p(per_seed),
            "n_seeds": int(finite.size)}

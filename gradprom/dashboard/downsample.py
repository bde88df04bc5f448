"""Server-side down-sampling of long per-step series, so a 100 000-step run sends ~2000 points per trace.

Min/max buckets keep every spike of a noisy series (a cosine that dips below τ for one step still shows);
bucket means turn a 0/1 gate into an open rate. Both are plain numpy, O(n).
"""

from __future__ import annotations

import numpy as np

MAX_POINTS = 2000


def _edges(n: int, buckets: int) -> np.ndarray:
    return np.linspace(0, n, buckets + 1).astype(np.int64)


def minmax(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points of (x, y): the first, last, min and max of each bucket, in x order.
    NaNs are ignored when picking extremes."""
    n = len(y)
    if n <= max_points:
        return x, y
    buckets = max(max_points // 2, 1)
    edges = _edges(n, buckets)
    starts = edges[:-1]
    y_f = np.where(np.isnan(y), np.inf, y)
    y_b = np.where(np.isnan(y), -np.inf, y)
    # reduceat gives values, not positions: lay the buckets out as rows of a padded matrix and argmin/argmax
    width = int(np.max(np.diff(edges)))
    pad = np.full((buckets, width), np.inf)
    pad_b = np.full((buckets, width), -np.inf)
    rows = np.repeat(np.arange(buckets), np.diff(edges))
    cols = np.arange(n) - np.repeat(starts, np.diff(edges))
    pad[rows, cols] = y_f
    pad_b[rows, cols] = y_b
    lo = starts + np.argmin(pad, axis=1)
    hi = starts + np.argmax(pad_b, axis=1)
    keep = np.unique(np.concatenate([lo, hi, [0, n - 1]]))
    return x[keep], y[keep]


def mean(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` bucket means of y (NaNs ignored), at each bucket's middle x."""
    n = len(y)
    if n <= max_points:
        return x, y
    edges = _edges(n, max_points)
    starts, counts = edges[:-1], np.diff(edges)
    valid = ~np.isnan(y)
    sums = np.add.reduceat(np.where(valid, y, 0.0), starts)
    nums = np.add.reduceat(valid.astype(np.float64), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / nums
    mids = x[starts + counts // 2]
    return mids, means


def matrix_mean(m: np.ndarray, max_cols: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Bucket means along axis 0 of an (n_steps, n_layers) matrix: (bucket start indices, (buckets, layers))."""
    n = m.shape[0]
    if n <= max_cols:
        return np.arange(n), m
    edges = _edges(n, max_cols)
    starts, counts = edges[:-1], np.diff(edges)
    return starts, np.add.reduceat(m, starts, axis=0) / counts[:, None]


def rolling_mean(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """A smoothed rate of a 0/1 series: a trailing window mean (window n/50) when short, bucket means when long."""
    n = len(y)
    if n > max_points:
        return mean(x, y, max_points)
    w = max(1, n // 50)
    c = np.concatenate([[0.0], np.cumsum(np.nan_to_num(y))])
    lo = np.maximum(np.arange(1, n + 1) - w, 0)
    return x, (c[1:] - c[lo]) / (np.arange(1, n + 1) - lo)

"""Server-side down-sampling: bounded size, extremes kept, order kept, rates preserved."""

from __future__ import annotations

import numpy as np
import pytest

from gradprom.dashboard import downsample


@pytest.mark.parametrize("n", [10, 1999, 2000, 2001, 100_000, 123_457])
def test_minmax_is_bounded_ordered_and_keeps_every_extreme(n):
    rng = np.random.default_rng(n)
    x = np.arange(n) * 3
    y = rng.normal(size=n)
    spikes = rng.choice(n, size=min(5, n), replace=False)
    y[spikes] = 100 + np.arange(len(spikes))  # single-step spikes must survive
    xs, ys = downsample.minmax(x, y)
    assert len(xs) <= downsample.MAX_POINTS + 2
    assert np.all(np.diff(xs) > 0)
    assert set(x[spikes]) <= set(xs)
    assert ys.min() == y.min() and ys.max() == y.max()
    assert xs[0] == x[0] and xs[-1] == x[-1]
    np.testing.assert_array_equal(ys, y[xs // 3])  # every point kept is a real point


def test_minmax_ignores_nan_when_picking_extremes():
    y = np.full(10_000, np.nan)
    y[1234], y[8000] = 5.0, -5.0
    xs, ys = downsample.minmax(np.arange(10_000), y, 100)
    assert 1234 in xs and 8000 in xs


def test_bucket_mean_of_a_gate_is_its_open_rate():
    rng = np.random.default_rng(0)
    gate = (rng.random(100_000) < 0.3).astype(float)
    xs, ys = downsample.mean(np.arange(100_000), gate)
    assert len(xs) == downsample.MAX_POINTS
    assert ys.mean() == pytest.approx(gate.mean(), abs=1e-12)  # equal buckets: the mean of means is the mean
    assert np.all((ys >= 0) & (ys <= 1))


def test_rolling_mean_short_series_and_matrix_buckets():
    xs, ys = downsample.rolling_mean(np.arange(4), np.array([1.0, 0.0, 1.0, 1.0]))
    np.testing.assert_array_equal(ys, [1.0, 0.0, 1.0, 1.0])  # window 1 below 100 steps
    xs, ys = downsample.rolling_mean(np.arange(200), np.tile([1.0, 0.0], 100))
    assert ys[-1] == 0.5 and len(ys) == 200
    m = np.zeros((1000, 3))
    m[:, 1] = 1
    starts, z = downsample.matrix_mean(m, max_cols=100)
    assert z.shape == (100, 3) and np.all(z[:, 1] == 1) and np.all(z[:, 0] == 0) and starts[0] == 0

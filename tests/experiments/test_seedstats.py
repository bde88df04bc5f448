"""Seed-level statistics against hand computations on small tables."""

from __future__ import annotations

import numpy as np
import pytest

from gradprom.experiments import seedstats as ss


def test_sign_flip_p_for_six_seeds_of_one_sign_is_two_in_64():
    d = [0.10, 0.20, 0.30, 0.15, 0.25, 0.05]
    assert ss.sign_flip_p(d) == pytest.approx(2 / 64)
    assert ss.min_sign_flip_p(6) == pytest.approx(2 / 64)
    assert ss.sign_flip_p([-x for x in d]) == pytest.approx(2 / 64)
    # three seeds can never go below 0.25
    assert ss.sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(0.25)


def test_sign_flip_p_mixed_signs_by_hand():
    # sums of ±3 ±1 ±1: 5, 3, 3, 1, -1, -3, -3, -5; |sum| >= 3 in 6 of 8 patterns
    assert ss.sign_flip_p([3.0, 1.0, -1.0]) == pytest.approx(6 / 8)
    # a sum of exactly zero: every pattern is at least as extreme
    assert ss.sign_flip_p([1.0, 2.0, -3.0]) == pytest.approx(1.0)
    # six seeds, one negative: |d| = 1, .5, .3, .2, .1, .2 (total 2.3), observed sum 1.9. Flipping a subset of
    # |d|-sum f gives |2.3 - 2f| >= 1.9 iff f <= 0.2 or f >= 2.1: {}, {.1}, {.2}, {.2'} and their 4 complements
    assert ss.sign_flip_p([1.0, 0.5, 0.3, 0.2, 0.1, -0.2]) == pytest.approx(8 / 64)


def test_per_seed_means_sd_and_comparison_on_a_small_table():
    # two strategies, 3 seeds x 4 images; a - b per image and per seed written out by hand
    a = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 2.0, 2.0]), np.array([0.0, 1.0, 1.0, 2.0])]
    b = [np.array([0.5, 1.5, 2.5, 3.5]), np.array([2.0, 1.0, 2.0, 1.0]), np.array([1.0, 1.0, 1.0, 1.0])]
    # per-seed mean differences: 0.5, 0.5, 0.0; mean 1/3; seed SD sqrt(((1/6)^2*2 + (1/3)^2)/2) = 0.288675
    r = ss.compare(a, b)
    assert r["per_seed"] == pytest.approx([0.5, 0.5, 0.0])
    assert r["mean"] == pytest.approx(1 / 3)
    assert r["seed_sd"] == pytest.approx(0.288675, abs=1e-6)
    assert r["n_seeds"] == 3
    # sign flip over ±0.5 ±0.5 ±0: |sum| >= 1 in 4 of 8 patterns
    assert r["p"] == pytest.approx(0.5)
    # the bootstrap CI is seeded (same answer twice) and lies within the range the resampling can reach
    assert ss.compare(a, b)["ci_lo"] == r["ci_lo"]
    assert -0.5 <= r["ci_lo"] <= r["mean"] <= r["ci_hi"] <= 1.0
    # no within-seed spread and equal seeds: the CI collapses on the value
    same = [np.full(5, 0.2)] * 4
    lo, hi = ss.hierarchical_ci(same)
    assert lo == pytest.approx(0.2) and hi == pytest.approx(0.2)


def test_hierarchical_ci_is_wider_than_the_pooled_image_ci_when_seeds_differ():
    rng = np.random.default_rng(1)
    per_seed = [rng.normal(mu, 0.1, size=200) for mu in (-0.3, 0.0, 0.3, 0.1, -0.1, 0.2)]
    lo, hi = ss.hierarchical_ci(per_seed)
    pooled = np.concatenate(per_seed)
    naive = 2 * 1.96 * pooled.std(ddof=1) / np.sqrt(pooled.size)
    assert hi - lo > 3 * naive


def test_non_inferiority_by_hand():
    # PSNR differences a - b per seed; the loss b - a is 0.02, 0.05, -0.01, 0.03: mean 0.0225, SD 0.025,
    # SE 0.0125, t(0.95, df 3) = 2.3534 (table) -> upper bound 0.0225 + 0.02942 = 0.05192 < 0.1
    ok, upper = ss.non_inferior([-0.02, -0.05, 0.01, -0.03])
    assert ok and upper == pytest.approx(0.0225 + 2.3534 * 0.0125, abs=1e-4)
    # a mean loss of 0.05 with a wide spread: the bound exceeds the margin, so quality is NOT shown kept,
    # although the loss is not significant
    ok, upper = ss.non_inferior([-0.25, 0.15, -0.05, -0.05])
    assert not ok and upper > 0.1
    assert ss.sign_flip_p([-0.25, 0.15, -0.05, -0.05]) > 0.05
    # one seed cannot show anything
    assert ss.non_inferior([0.5]) == (False, pytest.approx(float("nan"), nan_ok=True))


def test_task_margin_and_standard_error():
    assert ss.task_margin(clean=0.95, degraded=0.55, se=0.01) == pytest.approx(0.04)  # 10% of headroom
    assert ss.task_margin(clean=0.95, degraded=0.55, se=0.03) == pytest.approx(0.06)  # 2 SE
    # SE across seeds: per-seed means 0.5, 0.7 -> SD 0.141421, SE 0.1
    assert ss.standard_error([np.array([0.5, 0.5]), np.array([0.7, 0.7])]) == pytest.approx(0.1)


def test_benjamini_hochberg_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.5 -> p*m/rank 0.04, 0.06, 0.0533, 0.5 -> monotone 0.04, 0.0533, 0.0533, 0.5
    q = ss.bh_qvalues([0.01, 0.04, 0.03, 0.5, float("nan")])
    assert q[:4] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert np.isnan(q[4])

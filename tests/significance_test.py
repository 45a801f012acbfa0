"""tinythinker_jax.significance against hand-worked numbers and scipy's own tests."""

import math

import numpy as np
import pytest
from scipy import stats

from tinythinker_jax import significance


def test_t_interval_by_hand_and_against_scipy():
  assert significance.t_quantile(2) == pytest.approx(4.302653, abs=1e-6)  # t table
  assert significance.t_quantile(9) == pytest.approx(2.262157, abs=1e-6)
  interval = significance.t_interval([0.6, 0.7, 0.8])
  # mean 0.7, sd 0.1, half width 4.302653 * 0.1 / sqrt(3) = 0.248414
  assert interval.mean == pytest.approx(0.7)
  assert (interval.low, interval.high) == pytest.approx((0.451586, 0.948414), abs=1e-6)
  assert interval.p_value == pytest.approx(stats.ttest_1samp([0.6, 0.7, 0.8], 0).pvalue)
  assert interval.format() == "70.0 [45.2, 94.8]"
  one = significance.t_interval([0.5])
  assert (one.low, one.high, one.format()) == (None, None, "50.0 (n = 1)")


def test_paired_t_from_a_reported_mean_and_sd():
  """RESULTS.md's "-3.0 ± 2.5" over 3 seeds: about p = 0.18, no loss at 0.05."""
  values = -3.0 + 2.5 * np.array([-1.0, 0.0, 1.0])  # mean -3, sample sd 2.5
  summary = significance.paired_t_from_summary(-3.0, 2.5, 3)
  assert summary.p_value == pytest.approx(stats.ttest_1samp(values, 0).pvalue)
  assert 0.15 < summary.p_value < 0.2
  assert not summary.excludes_zero()
  a, b = [0.8, 0.7, 0.9], [0.6, 0.6, 0.65]
  paired = significance.paired_t(a, b)
  assert paired.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)


@pytest.mark.parametrize("only_a,only_b", [(0, 0), (3, 0), (5, 9), (20, 7), (40, 41)])
def test_mcnemar_is_an_exact_binomial_test(only_a, only_b):
  both = 10
  a = [True] * both + [True] * only_a + [False] * only_b + [False] * 4
  b = [True] * both + [False] * only_a + [True] * only_b + [False] * 4
  result = significance.mcnemar(a, b)
  assert (result.only_a, result.only_b) == (only_a, only_b)
  n = only_a + only_b
  expected = 1.0 if n == 0 else stats.binomtest(only_a, n, 0.5).pvalue
  assert result.p_value == pytest.approx(expected)


def test_holm_by_hand():
  # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)
  assert significance.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
  assert significance.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_bootstrap():
  same = [[True, False, True, True]] * 3
  equal = significance.paired_bootstrap(same, same, samples=200)
  assert (equal.mean, equal.low, equal.high, equal.p_value) == (0, 0, 0, 1)
  assert equal.format() == "0.0 [0.0, 0.0]"
  apart = significance.paired_bootstrap([[True] * 5] * 2, [[False] * 5] * 2, samples=200)
  assert (apart.low, apart.high, apart.p_value) == (1, 1, 0)
  # One seed of 2000 questions: the percentile interval is close to the normal
  # approximation of a paired difference of proportions.
  rng = np.random.default_rng(1)
  a = rng.random(2000) < 0.6
  b = np.where(rng.random(2000) < 0.8, a, ~a)
  boot = significance.paired_bootstrap([a.tolist()], [b.tolist()], samples=4000)
  diff = a.astype(float) - b.astype(float)
  half = 1.959964 * diff.std(ddof=0) / math.sqrt(len(diff))
  assert boot.mean == pytest.approx(diff.mean())
  assert boot.low == pytest.approx(diff.mean() - half, abs=0.005)
  assert boot.high == pytest.approx(diff.mean() + half, abs=0.005)


def test_majority_baseline_and_verdicts():
  answer, accuracy = significance.majority_baseline(["yes"] * 160 + ["no"] * 140)
  assert (answer, accuracy) == ("yes", pytest.approx(160 / 300))  # Coin Flip's test split
  interval = significance.t_interval([0.05, 0.06, 0.07])
  assert significance.verdict(interval, 0.01) == "a gain"
  assert significance.verdict(interval, 0.2) == "not distinguishable"
  assert significance.verdict(significance.t_interval([0.1]), None) == "one seed: no test"


def test_a_one_seed_verdict_says_it_is_over_questions_only():
  boot = significance.paired_bootstrap([[True] * 30 + [False] * 10],
                                       [[False] * 30 + [True] * 10], samples=500)
  assert boot.n == 1
  assert significance.verdict(boot, 0.001) == "a gain (one seed: over its questions only)"

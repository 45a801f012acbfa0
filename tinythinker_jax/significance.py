"""Statistics a reviewer accepts for method comparisons over seeds and questions.

- `t_interval`: a mean over seeds with its 95% interval, Student's t with n - 1
  degrees of freedom (n = 1: no interval; the row is marked n = 1).
- `paired_t`: a paired difference over seeds (the same seeds run both methods):
  its mean, 95% t interval and two-sided p-value; `paired_t_from_summary` does
  the same from a reported mean, sample standard deviation and n.
- `paired_bootstrap`: the difference of two students' accuracies resampled over
  seeds and, within each drawn seed, over questions (both students answered
  the same questions): a percentile interval and a two-sided p-value.
- `mcnemar`: the exact McNemar test on one seed's per-question correctness of
  two students (a binomial test on the questions only one got right), and
  `mcnemar_seeds`, the same over every seed's questions pooled.
- `majority_baseline`: the accuracy of always answering the most common gold
  answer, the floor a classifier has to beat (not "chance").

Each verdict table states the number of comparisons it makes; `holm` adjusts
their p-values (Holm-Bonferroni) so that the family's error rate is 5%.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
  """A mean with its interval (None below two values) and the count it is over."""

  mean: float
  low: Optional[float]
  high: Optional[float]
  n: int
  p_value: Optional[float] = None  # Two-sided, against a mean of zero.

  def format(self, scale: float = 100.0, digits: int = 1) -> str:
    if self.n == 0:
      return "–"
    if self.low is None or self.high is None:
      return f"{self.mean * scale:.{digits}f} (n = {self.n})"
    return (f"{self.mean * scale:.{digits}f} [{self.low * scale:.{digits}f}, "
            f"{self.high * scale:.{digits}f}]")

  def excludes_zero(self) -> bool:
    return self.low is not None and self.high is not None and (
        self.low > 0 or self.high < 0)


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
  """The two-sided t critical value (4.303 for df = 2 at 95%)."""
  return float(scipy_stats.t.ppf(0.5 + confidence / 2, df))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
  """The mean of `values` and its t interval (n - 1 degrees of freedom), with the
  two-sided p-value of a one-sample t-test against zero."""
  values = [float(v) for v in values]
  n = len(values)
  if n == 0:
    return Interval(math.nan, None, None, 0)
  mean = sum(values) / n
  if n == 1:
    return Interval(mean, None, None, 1)
  sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
  return _from_summary(mean, sd, n, confidence)


def _from_summary(mean: float, sd: float, n: int, confidence: float) -> Interval:
  half = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
  if sd == 0:
    p = 1.0 if mean == 0 else 0.0
  else:
    p = float(2 * scipy_stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
  return Interval(mean, mean - half, mean + half, n, p)


def paired_t(a: Sequence[float], b: Sequence[float],
             confidence: float = CONFIDENCE) -> Interval:
  """`a - b` paired by seed: mean, t interval and p-value."""
  if len(a) != len(b):
    raise ValueError(f"paired values: {len(a)} against {len(b)}")
  return t_interval([x - y for x, y in zip(a, b)], confidence)


def paired_t_from_summary(mean: float, sd: float, n: int,
                          confidence: float = CONFIDENCE) -> Interval:
  """A paired t-test from a reported mean ± sample standard deviation over n seeds."""
  if n < 2:
    return Interval(mean, None, None, n)
  return _from_summary(mean, sd, n, confidence)


def paired_bootstrap(a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]], *,
                     samples: int = 10000, seed: int = 0,
                     confidence: float = CONFIDENCE) -> Interval:
  """Accuracy of `a` minus `b`, where `a[s][q]` is whether student a answered
  question q right in seed s (both students, the same questions per seed).
  Each bootstrap draw resamples the seeds, then each drawn seed's questions;
  the interval is the draws' percentiles, the p-value twice the smaller tail
  of draws on either side of zero."""
  if len(a) != len(b) or not a:
    raise ValueError(f"paired seeds: {len(a)} against {len(b)}")
  diffs = []
  for x, y in zip(a, b):
    if len(x) != len(y):
      raise ValueError(f"one seed's questions: {len(x)} against {len(y)}")
    diffs.append(np.asarray(x, np.float64) - np.asarray(y, np.float64))
  observed = float(np.mean([d.mean() for d in diffs]))
  rng = np.random.default_rng(seed)
  draws = np.empty(samples)
  num_seeds = len(diffs)
  for i in range(samples):
    chosen = rng.integers(0, num_seeds, num_seeds)
    draws[i] = np.mean([diffs[s][rng.integers(0, len(diffs[s]), len(diffs[s]))].mean()
                        for s in chosen])
  tail = (1 - confidence) / 2
  low, high = np.quantile(draws, [tail, 1 - tail])
  p = min(1.0, 2 * min(np.mean(draws <= 0), np.mean(draws >= 0)))
  return Interval(observed, float(low), float(high), num_seeds, float(p))


@dataclasses.dataclass(frozen=True)
class McNemar:
  only_a: int  # questions a answered right and b wrong
  only_b: int
  p_value: float

  def format(self) -> str:
    return f"{self.only_a} vs {self.only_b}, {p_phrase(self.p_value)}"


def _binomial_two_sided(k: int, n: int) -> float:
  """Exact two-sided p of k successes in n fair coin flips (doubling the tail)."""
  if n == 0:
    return 1.0
  tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
  return min(1.0, 2 * tail)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
  """The exact McNemar test of two students on the same questions."""
  if len(a) != len(b):
    raise ValueError(f"paired questions: {len(a)} against {len(b)}")
  only_a = sum(1 for x, y in zip(a, b) if x and not y)
  only_b = sum(1 for x, y in zip(a, b) if y and not x)
  return McNemar(only_a, only_b, _binomial_two_sided(only_a, only_a + only_b))


def mcnemar_seeds(a: Sequence[Sequence[bool]], b: Sequence[Sequence[bool]]) -> McNemar:
  """McNemar over every seed's questions pooled (each seed's pair of runs is a
  pair of answers to each question)."""
  return mcnemar([x for seed in a for x in seed], [y for seed in b for y in seed])


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values (in the input's order)."""
  m = len(p_values)
  order = sorted(range(m), key=lambda i: p_values[i])
  adjusted = [0.0] * m
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p_values[i]))
    adjusted[i] = running
  return adjusted


def majority_baseline(golds: Sequence[str]) -> tuple[str, float]:
  """The most common gold answer and the accuracy of always giving it."""
  if not golds:
    return "", math.nan
  answer, count = collections.Counter(golds).most_common(1)[0]
  return answer, count / len(golds)


def format_p(value: Optional[float]) -> str:
  if value is None:
    return "–"
  return "< 0.001" if value < 0.001 else f"{value:.3f}"


def p_phrase(value: Optional[float]) -> str:
  """'p = 0.042' or 'p < 0.001'."""
  text = format_p(value)
  return f"p {text}" if text.startswith("<") else f"p = {text}"


def verdict(interval: Interval, adjusted_p: Optional[float], alpha: float = 0.05) -> str:
  """A comparison's plain-words verdict."""
  if interval.n < 2 and interval.p_value is None:
    return "one seed: no test"
  words = ("not distinguishable" if adjusted_p is None or adjusted_p >= alpha else
           "a gain" if interval.mean > 0 else "a loss")
  # One seed: a per-question test says nothing of the seed-to-seed spread.
  return words + (" (one seed: over its questions only)" if interval.n < 2 else "")

"""Statistics for a seeded experiment: t-intervals, seed-paired differences, sign counts, verdicts.

Pure functions on plain floats, tested on hand-computed fixtures (``tests/test_experiment_stats.py``).

Why Student's t and pairing by seed: an experiment has a handful of seeds (3 to 8), so a normal
interval would be too narrow; and seed-to-seed spread within one arm is typically larger than the
effect (both arms of a seed share the pretraining data order, the finetuning data and the test
set), so the informative statistic is the per-seed difference, not the difference of means.

The t quantile is computed here rather than taken from scipy (not a dependency of this project):
the CDF is the regularized incomplete beta function, evaluated by its continued fraction
(modified Lentz), and the quantile is found by bisection. Accurate to ~1e-10, which is far below
what a 95% interval over seeds needs, and ~50 lines instead of a 40 MB package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (e.g. p=0.975, df=7 -> 2.3646)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with a two-sided t-interval; ``lo``/``hi`` are None when n < 2."""

    mean: float
    lo: float | None
    hi: float | None
    n: int
    sd: float | None
    confidence: float = 0.95

    @property
    def half_width(self) -> float | None:
        return None if self.hi is None else self.hi - self.mean


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and its ``confidence`` t-interval (sample sd, n - 1 degrees of freedom)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("no values: a mean needs at least one")
    if any(not math.isfinite(x) for x in xs):
        raise ValueError(f"non-finite value among {xs}")
    mean = math.fsum(xs) / n
    if n < 2:
        return Interval(mean, None, None, n, None, confidence)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, confidence)


def paired_differences(treatment: Mapping[int, float], control: Mapping[int, float]) -> dict[int, float]:
    """``treatment[s] - control[s]`` for every seed ``s`` present in both, in seed order."""
    return {s: float(treatment[s]) - float(control[s]) for s in sorted(set(treatment) & set(control))}


@dataclass(frozen=True)
class SignCount:
    positive: int
    negative: int
    zero: int

    def __str__(self) -> str:
        n = self.positive + self.negative + self.zero
        text = f"{self.positive}/{n} seeds positive"
        if self.zero:
            text += f", {self.zero} tied"
        return text


def sign_count(differences: Sequence[float]) -> SignCount:
    return SignCount(
        positive=sum(d > 0 for d in differences),
        negative=sum(d < 0 for d in differences),
        zero=sum(d == 0 for d in differences),
    )


def verdict(interval: Interval) -> str:
    """ "gain" when the interval excludes 0 from above, "loss" from below, else a bounded null."""
    if interval.lo is None or interval.hi is None:
        return f"undetermined (one seed, difference {interval.mean:+.2f}; an interval needs 2 or more)"
    if interval.lo > 0:
        return "gain"
    if interval.hi < 0:
        return "loss"
    return f"null, bounded by [{interval.lo:+.2f}, {interval.hi:+.2f}]"

"""Confidence intervals over training seeds: a metric's Student-t interval, and the paired difference of
two configurations trained on the same seeds.

A run trained with K seeds gives K values of each test metric. `seed_interval` summarises them by their
mean, their sample standard deviation (ddof=1) and the Student-t interval ``mean ± t * std / sqrt(K)``
with ``t = scipy.stats.t.ppf((1 + confidence) / 2, K - 1)``. `paired_difference` compares two runs
seed by seed: the interval of the mean of the per-seed differences ``a - b`` and the two-sided paired
t-test (``scipy.stats.ttest_rel``). Pairing removes the spread that both runs share through their seed
(the data order, and the initialisation where the two models have the same parameters), so it detects
smaller differences than two separate intervals do.

With one seed the spread is unknown: the interval bounds, the standard deviation and the p-value are NaN,
never a made-up interval. Pure NumPy and SciPy: no JAX, no model code.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import scipy.stats


@dataclasses.dataclass(frozen=True)
class SeedInterval:
    """The mean of one metric over seeds and its Student-t confidence interval (:func:`seed_interval`).

    With one seed the spread is unknown: ``std``, ``half_width``, ``low`` and ``high`` are NaN.
    """

    mean: float
    """The mean over seeds."""
    std: float
    """The sample standard deviation (ddof=1)."""
    half_width: float
    """``t * std / sqrt(n)``: the interval is ``mean ± half_width``."""
    low: float
    """``mean - half_width``."""
    high: float
    """``mean + half_width``."""
    n: int
    """The number of seeds."""
    confidence: float
    """The interval's coverage, e.g. 0.95."""


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """The mean per-seed difference ``a - b`` of two runs, its Student-t interval and the paired t-test
    (:func:`paired_difference`).

    With one seed (one pair) ``std``, ``half_width``, ``low``, ``high`` and ``p_value`` are NaN.
    """

    mean: float
    """The mean of the per-seed differences ``a[i] - b[i]``."""
    std: float
    """The sample standard deviation (ddof=1) of the differences."""
    half_width: float
    """``t * std / sqrt(n)``: the interval is ``mean ± half_width``."""
    low: float
    """``mean - half_width``."""
    high: float
    """``mean + half_width``."""
    p_value: float
    """The two-sided paired t-test's p-value for "the mean difference is 0"; NaN also when every difference
    is the same (zero spread: the test statistic is undefined)."""
    n: int
    """The number of seeds (pairs)."""
    confidence: float
    """The interval's coverage, e.g. 0.95."""


def _as_values(values, name: str) -> np.ndarray:
    """`values` as a 1-D float64 array of at least one finite number, else a one-line ValueError."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must hold at least one value, got an empty sequence")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    return float(confidence)


def _t_half_width(std: float, n: int, confidence: float) -> float:
    """``t_{(1 + confidence) / 2, n - 1} * std / sqrt(n)``; NaN when n == 1."""
    if n < 2:
        return math.nan
    return float(scipy.stats.t.ppf((1.0 + confidence) / 2.0, n - 1) * std / math.sqrt(n))


def seed_interval(values, confidence: float = 0.95) -> SeedInterval:
    """Mean, sample standard deviation and Student-t confidence interval of one metric over seeds.

    The interval is ``mean ± t * std / sqrt(n)`` with ``t = scipy.stats.t.ppf((1 + confidence) / 2, n - 1)``
    and ``std`` the sample standard deviation (ddof=1): it covers the mean over all seeds with probability
    ``confidence`` when the per-seed values are roughly normal. With one value the spread is unknown and the
    interval is undefined: ``std``, ``half_width``, ``low`` and ``high`` are NaN (never a made-up interval).
    Values that are all equal give a zero-width interval.

    Args:
      values: (n,) the metric of each seed, n >= 1, all finite.
      confidence: the interval's coverage, in (0, 1).

    Returns:
      A :class:`SeedInterval`.

    Raises:
      ValueError: ``values`` is not 1-D, is empty or holds NaN / Inf; ``confidence`` is not in (0, 1).

    Examples:
      >>> r = seed_interval([1.0, 2.0, 3.0, 4.0, 5.0])  # t_{0.975, 4} = 2.776...
      >>> r.mean, round(r.std, 4), round(r.half_width, 4), round(r.low, 4), round(r.high, 4), r.n
      (3.0, 1.5811, 1.9632, 1.0368, 4.9632, 5)
      >>> seed_interval([0.97]).low  # one seed: no interval
      nan
    """
    array = _as_values(values, "values")
    confidence = _check_confidence(confidence)
    n = int(array.size)
    mean = float(np.mean(array))
    std = float(np.std(array, ddof=1)) if n > 1 else math.nan
    half = _t_half_width(std, n, confidence)
    return SeedInterval(mean, std, half, mean - half, mean + half, n, confidence)


def paired_difference(a, b, confidence: float = 0.95) -> PairedDifference:
    """The mean per-seed difference ``a - b``, its Student-t interval and the two-sided paired t-test.

    ``a[i]`` and ``b[i]`` must come from the same seed. The interval is :func:`seed_interval` of the
    differences; the p-value is ``scipy.stats.ttest_rel(a, b).pvalue`` (two-sided). An interval that
    excludes 0 and ``p < 1 - confidence`` say the same thing. With one pair, the interval and the p-value are
    NaN; when every difference is the same (zero spread) the interval has zero width and the p-value is NaN.

    Args:
      a: (n,) one run's metric per seed, n >= 1, all finite.
      b: (n,) the other run's metric for the same seeds, in the same order.
      confidence: the interval's coverage, in (0, 1).

    Returns:
      A :class:`PairedDifference`.

    Raises:
      ValueError: ``a`` or ``b`` is not 1-D, is empty or holds NaN / Inf; their lengths differ;
        ``confidence`` is not in (0, 1).

    Examples:
      >>> d = paired_difference([0.90, 0.92, 0.91], [0.88, 0.89, 0.90])
      >>> round(d.mean, 4), round(d.low, 4), round(d.high, 4), round(d.p_value, 4), d.n
      (0.02, -0.0048, 0.0448, 0.0742, 3)
    """
    a_values = _as_values(a, "a")
    b_values = _as_values(b, "b")
    if a_values.size != b_values.size:
        raise ValueError(
            f"a and b must hold one value per seed each, got {a_values.size} and {b_values.size} values"
        )
    differences = a_values - b_values
    interval = seed_interval(differences, confidence)
    if interval.n < 2 or np.ptp(differences) == 0:
        p_value = math.nan
    else:
        with warnings.catch_warnings():  # nearly equal differences: scipy warns about precision only
            warnings.simplefilter("ignore", RuntimeWarning)
            p_value = float(scipy.stats.ttest_rel(a_values, b_values).pvalue)
    return PairedDifference(
        interval.mean,
        interval.std,
        interval.half_width,
        interval.low,
        interval.high,
        p_value,
        interval.n,
        interval.confidence,
    )

"""Student-t intervals over seeds and paired differences (attn_jax.metrics.intervals): values worked out by
hand here, scipy.stats directly, NaN (never a made-up interval) for one seed, one-line ValueErrors."""

import dataclasses
import math

import numpy as np
import pytest
import scipy.stats

from attn_jax.metrics import PairedDifference, SeedInterval, paired_difference, seed_interval

T_975_DF4 = 2.7764451051977987  # Student t quantile 0.975 with 4 degrees of freedom (tables)
# With 2 degrees of freedom the t distribution has a closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so
# the quantile p is (2p - 1) / sqrt(2p(1 - p)) and the two-sided p-value of t is 1 - t / sqrt(2 + t^2).
T_975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)


def test_interval_of_one_to_five_by_hand():
    r = seed_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = T_975_DF4 * math.sqrt(2.5) / math.sqrt(5)  # std sqrt(10 / 4)
    assert r.n == 5 and r.confidence == 0.95
    assert r.mean == pytest.approx(3.0, rel=1e-15)
    assert r.std == pytest.approx(math.sqrt(2.5), rel=1e-14)
    assert r.half_width == pytest.approx(half, rel=1e-12)
    assert (r.low, r.high) == (pytest.approx(3.0 - half, rel=1e-12), pytest.approx(3.0 + half, rel=1e-12))


def test_interval_with_two_degrees_of_freedom_by_hand():
    r = seed_interval([0.5, 1.0, 1.5])  # mean 1, std 0.5
    assert r.std == pytest.approx(0.5, rel=1e-14)
    assert r.half_width == pytest.approx(T_975_DF2 * 0.5 / math.sqrt(3), rel=1e-12)


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
@pytest.mark.parametrize("n", [2, 5, 11])
def test_interval_equals_scipy_t_interval(n, confidence):
    values = np.random.default_rng(n).normal(0.9, 0.02, size=n)
    low, high = scipy.stats.t.interval(confidence, n - 1, loc=values.mean(), scale=scipy.stats.sem(values))
    r = seed_interval(values.tolist(), confidence)
    assert r.low == pytest.approx(low, rel=1e-12) and r.high == pytest.approx(high, rel=1e-12)
    assert r.std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert r.confidence == confidence


def test_one_seed_has_no_interval():
    r = seed_interval([0.97])
    assert r.mean == 0.97 and r.n == 1
    assert all(math.isnan(x) for x in (r.std, r.half_width, r.low, r.high))


def test_equal_values_give_a_zero_width_interval():
    r = seed_interval([0.5, 0.5, 0.5])
    assert (r.mean, r.std, r.half_width, r.low, r.high) == (0.5, 0.0, 0.0, 0.5, 0.5)


def test_paired_difference_by_hand():
    # differences [2, 3, 1]: mean 2, std 1, t = 2 / (1 / sqrt 3) = sqrt 12, p = 1 - sqrt(12 / 14)
    d = paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])
    assert d.n == 3 and d.mean == 2.0 and d.std == pytest.approx(1.0, rel=1e-14)
    assert d.half_width == pytest.approx(T_975_DF2 / math.sqrt(3), rel=1e-12)
    assert d.low == pytest.approx(2.0 - T_975_DF2 / math.sqrt(3), rel=1e-12)
    assert d.high == pytest.approx(2.0 + T_975_DF2 / math.sqrt(3), rel=1e-12)
    assert d.p_value == pytest.approx(1.0 - math.sqrt(6.0 / 7.0), rel=1e-10)


def test_paired_difference_is_a_minus_b():
    d = paired_difference([1.0, 2.0, 3.0], [3.0, 5.0, 4.0])
    assert d.mean == -2.0 and d.high == pytest.approx(-2.0 + T_975_DF2 / math.sqrt(3), rel=1e-12)


@pytest.mark.parametrize("n", [2, 5, 8])
def test_paired_difference_equals_scipy_ttest_rel(n):
    rng = np.random.default_rng(10 + n)
    b = rng.normal(0.90, 0.02, size=n)
    a = b + rng.normal(0.01, 0.01, size=n)
    expected = scipy.stats.ttest_rel(a, b)
    low, high = expected.confidence_interval(0.95)
    d = paired_difference(a.tolist(), b.tolist())
    assert d.p_value == pytest.approx(expected.pvalue, rel=1e-10)
    assert d.low == pytest.approx(low, rel=1e-10) and d.high == pytest.approx(high, rel=1e-10)
    assert d.mean == pytest.approx(np.mean(a - b), rel=1e-12)


def test_pairing_beats_separate_intervals_when_seeds_share_spread():
    # a is b plus 0.01 on every seed but one: the seeds' shared spread (0.05) cancels in the pairs
    b = np.array([0.80, 0.85, 0.90, 0.95])
    a = b + np.array([0.010, 0.011, 0.009, 0.010])
    d = paired_difference(a, b)
    assert d.low > 0 and d.p_value < 1e-3
    assert seed_interval(a).low < seed_interval(b).high  # unpaired, the intervals overlap


def test_one_pair_has_a_difference_but_no_interval_or_p_value():
    d = paired_difference([0.9], [0.8])
    assert d.mean == pytest.approx(0.1) and d.n == 1
    assert all(math.isnan(x) for x in (d.std, d.half_width, d.low, d.high, d.p_value))


@pytest.mark.parametrize("shift", [0.0, 0.25])
def test_equal_differences_have_zero_width_and_no_p_value(shift):
    d = paired_difference([1.0 + shift, 2.0 + shift], [1.0, 2.0])
    assert (d.mean, d.low, d.high, d.std) == (shift, shift, shift, 0.0)
    assert math.isnan(d.p_value)


def test_results_are_dataclasses_with_named_fields():
    assert [f.name for f in dataclasses.fields(SeedInterval)] == [
        "mean", "std", "half_width", "low", "high", "n", "confidence",
    ]  # fmt: skip
    assert [f.name for f in dataclasses.fields(PairedDifference)] == [
        "mean", "std", "half_width", "low", "high", "p_value", "n", "confidence",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "values, match",
    [
        ([], r"^values must hold at least one value, got an empty sequence$"),
        ([[1.0, 2.0]], r"^values must be a 1-D sequence of numbers, got shape \(1, 2\)$"),
        ([1.0, float("nan")], r"^values must be finite, got \[1\.0, nan\]$"),
        ([1.0, float("inf")], r"^values must be finite, got \[1\.0, inf\]$"),
    ],
)
def test_bad_values_are_one_line_errors(values, match):
    with pytest.raises(ValueError, match=match):
        seed_interval(values)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1, True, "0.95"])
def test_bad_confidence_is_a_one_line_error(confidence):
    with pytest.raises(ValueError, match=r"^confidence must be a number in \(0, 1\), got "):
        seed_interval([1.0, 2.0], confidence)
    with pytest.raises(ValueError, match=r"^confidence must be a number in \(0, 1\), got "):
        paired_difference([1.0, 2.0], [1.0, 3.0], confidence)


def test_paired_difference_rejects_unequal_lengths_and_non_finite_values():
    with pytest.raises(ValueError, match=r"^a and b must hold one value per seed each, got 3 and 2 values$"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^b must be finite, got \[1\.0, nan\]$"):
        paired_difference([1.0, 2.0], [1.0, float("nan")])
    with pytest.raises(ValueError, match=r"^a must hold at least one value"):
        paired_difference([], [])

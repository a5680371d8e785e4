"""Wilson intervals and McNemar's exact test against values computed independently.

Reference values are scipy 1.17's `binomtest(k, n).pvalue` and
`binomtest(k, n).proportion_ci(method="wilson")`, and a bisection on the score test below.
"""

from __future__ import annotations

import pytest

from mapd.stats import Z_95, mcnemar_exact, paired_counts, wilson_interval


def score_test_bound(correct: int, n: int, upper: bool) -> float:
    """The proportion p where the score statistic |p̂ - p| / sqrt(p(1-p)/n) reaches Z_95."""
    phat = correct / n
    lo, hi = (phat, 1.0) if upper else (0.0, phat)
    for _ in range(200):
        mid = (lo + hi) / 2
        outside = (phat - mid) ** 2 > Z_95**2 * mid * (1 - mid) / n
        if outside == upper:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


@pytest.mark.parametrize(
    ("correct", "n", "low", "high"),
    [
        (77, 613, 0.10168614762752973, 0.15420044456499685),
        (0, 10, 0.0, 0.27753279986288926),
    ],
)
def test_wilson_matches_scipy(correct, n, low, high):
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=1e-12)


@pytest.mark.parametrize(("correct", "n"), [(77, 613), (3, 200), (199, 200), (50, 100)])
def test_wilson_is_where_the_score_test_turns(correct, n):
    low, high = wilson_interval(correct, n)
    assert low == pytest.approx(score_test_bound(correct, n, upper=False), abs=1e-9)
    assert high == pytest.approx(score_test_bound(correct, n, upper=True), abs=1e-9)


def test_wilson_of_no_questions_and_bad_counts():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


@pytest.mark.parametrize(
    ("only_a", "only_b", "p"),
    [
        (30, 21, 0.2624375357110438),
        (1, 9, 0.021484375),
        (70, 10, 3.161290522649495e-12),
        (5, 0, 0.0625),
        (5, 5, 1.0),
        (0, 0, 1.0),
    ],
)
def test_mcnemar_matches_scipy_binomtest(only_a, only_b, p):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(p, rel=1e-12)
    assert mcnemar_exact(only_b, only_a) == pytest.approx(p, rel=1e-12)


def test_paired_counts_use_only_shared_ids():
    a = {"q1": True, "q2": True, "q3": False, "q4": False, "q5": True}
    b = {"q1": True, "q2": False, "q3": True, "q4": False, "q6": True}
    pair = paired_counts(a, b)
    assert (pair.both_right, pair.only_a, pair.only_b, pair.both_wrong) == (1, 1, 1, 1)
    assert pair.n == 4
    assert pair.p_value == 1.0

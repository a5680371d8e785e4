"""Wilson intervals, McNemar's exact test, the seed-paired sign-flip test and Holm's
adjustment against values computed independently.

Reference values are scipy 1.17's `binomtest(k, n).pvalue` and
`binomtest(k, n).proportion_ci(method="wilson")`, a bisection on the score test below, and
sign flips and Holm steps counted by hand.
"""

from __future__ import annotations

import pytest

from mapd.stats import (
    Z_95,
    holm,
    mcnemar_exact,
    paired_counts,
    seed_paired,
    sign_flip_exact,
    wilson_interval,
)


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


SCIPY_BINOMTEST = [
    (30, 21, 0.2624375357110438),
    (1, 9, 0.021484375),
    (70, 10, 3.161290522649495e-12),
    (5, 0, 0.0625),
    (5, 5, 1.0),
    (0, 0, 1.0),
]


@pytest.mark.parametrize(("only_a", "only_b", "p"), SCIPY_BINOMTEST)
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


@pytest.mark.parametrize(("only_a", "only_b", "p"), SCIPY_BINOMTEST)
def test_sign_flip_test_of_one_seed_is_mcnemars(only_a, only_b, p):
    differences = [1] * only_a + [0] * 7 + [-1] * only_b  # ties change nothing
    assert sign_flip_exact(differences) == pytest.approx(p, rel=1e-12)
    right_a = {f"q{i}": i < only_a for i in range(only_a + only_b + 7)}
    right_b = {f"q{i}": i >= only_a + 7 for i in range(only_a + only_b + 7)}
    one_seed = seed_paired([(right_a, right_b)])
    assert (one_seed.counts.only_a, one_seed.counts.only_b) == (only_a, only_b)
    assert one_seed.p_value == pytest.approx(p, rel=1e-12)


def test_sign_flip_test_by_hand():
    # the 8 sign flips of [2, 1, -1] sum to 4, 2, 2, 0, 0, -2, -2, -4; |S| >= 2 in 6
    assert sign_flip_exact([2, 1, -1]) == 0.75
    assert sign_flip_exact([0, -2, 0, -1, 1]) == 0.75
    assert sign_flip_exact([]) == sign_flip_exact([0, 0]) == 1.0


def test_sign_flip_test_of_613_questions_is_exact_and_quick():
    # each d of ±4 (four seeds, always one way) is one coin: McNemar's on 300 vs 313
    assert sign_flip_exact([4] * 300 + [-4] * 313) == pytest.approx(
        mcnemar_exact(300, 313), rel=1e-12
    )
    assert sign_flip_exact([3] * 613) == 2 / 2**613


def test_a_question_answered_alike_in_both_seeds_counts_once():
    # a right and b wrong on q1 and q2 in both seeds, alike elsewhere: 4 discordant pairs,
    # but 2 questions; each flips as one, so 2 of the 4 sign flips are as extreme
    a = {"q1": True, "q2": True, "q3": True, "q4": False}
    b = {"q1": False, "q2": False, "q3": True, "q4": False}
    both = seed_paired([(a, b), (dict(a), dict(b))])
    assert (both.counts.only_a, both.counts.only_b, both.counts.n) == (4, 0, 8)
    assert mcnemar_exact(4, 0) == 0.125  # the old pooling: 4 pairs as 4 coins
    assert (both.differences, both.questions, both.seeds) == ([2, 2, 0, 0], 4, 2)
    assert both.p_value == 0.5


def test_a_student_evaluated_once_counts_once_per_seed_of_the_other():
    untrained = {"q1": True, "q2": False, "q3": True}
    seed_731 = {"q1": False, "q2": False, "q3": True}
    seed_1 = {"q1": True, "q2": True}  # q3 missing: left out of every seed
    both = seed_paired([(untrained, seed_731), (untrained, seed_1)])
    assert both.differences == [2 * 1 - 1, 2 * 0 - 1]  # d_q = k·u_q - Σ_s b_qs
    counts = both.counts
    assert (counts.both_right, counts.only_a, counts.only_b, counts.both_wrong) == (1, 1, 1, 1)
    assert both.p_value == 1.0


def test_holm_steps_down_and_stays_monotone():
    # sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1: 0.04, 0.09, 0.08 -> 0.09, 0.2
    assert holm([0.01, 0.04, 0.2, 0.03]) == pytest.approx([0.04, 0.09, 0.2, 0.09])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.02]) == [0.02]
    assert holm([]) == []

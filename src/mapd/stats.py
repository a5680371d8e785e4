"""Accuracy with a Wilson interval, and exact paired tests for two students on the same questions.

    low, high = wilson_interval(77, 613)             # 95 % interval of 77 right of 613
    pair = paired_counts(mapd_right, other_right)    # {item id: right?} for each student
    p = mcnemar_exact(pair.only_a, pair.only_b)      # two-sided, on the discordant items
    both = seed_paired([(a_731, b_731), (a_1, b_1)])  # several seeds, the question as the unit
    p = both.p_value                                 # the sign-flip test of its differences
    adjusted = holm([0.01, 0.04, 0.2])               # for the number of comparisons

McNemar's test looks only at the items one student gets right and the other wrong; under
"no difference" each such item is a fair coin, so the p-value is the two-sided binomial
probability of a split at least as uneven.

With several seeds the answers to one question are not independent (the question is as
hard in every seed), so the question is the unit: d_q = the seeds in which student a is
right on q minus those in which b is. Under "no difference" each d_q is as likely negative
as positive, and the exact p-value is the share of the 2^n sign flips whose sum is at least
as far from 0 as the observed one. With one seed this is McNemar's exact test. No scipy, no
sampling: the sums are exact integers.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `correct / n` (95 % by default)."""
    if not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n, got {correct} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def sign_flip_exact(differences: Iterable[int]) -> float:
    """Two-sided exact p-value of the paired differences: P(|Σ ±d| >= |Σ d|) over every sign
    flip (1.0 when all are 0)."""
    nonzero = [d for d in differences if d]  # a tie flips to itself: it changes no sum
    sizes = [abs(d) for d in nonzero]
    observed, total = abs(sum(nonzero)), sum(sizes)
    # ways[t]: how many sign flips give the positive differences the sum t; Σ ±d = 2t - total
    ways = [1]
    for size in sizes:
        ways = [a + b for a, b in zip(ways + [0] * size, [0] * size + ways, strict=True)]
    extreme = sum(w for t, w in enumerate(ways) if abs(2 * t - total) >= observed)
    return extreme / 2 ** len(sizes)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the given order: the i-th smallest of m times
    (m - i + 1), never below an earlier one, at most 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class PairedCounts:
    """How two students did on the items both answered."""

    both_right: int
    only_a: int
    only_b: int
    both_wrong: int

    @property
    def n(self) -> int:
        return self.both_right + self.only_a + self.only_b + self.both_wrong

    @property
    def p_value(self) -> float:
        return mcnemar_exact(self.only_a, self.only_b)


def paired_counts(a: Mapping[Hashable, bool], b: Mapping[Hashable, bool]) -> PairedCounts:
    """Counts over the item ids present in both `a` and `b`."""
    shared = a.keys() & b.keys()
    both = sum(a[k] and b[k] for k in shared)
    only_a = sum(a[k] and not b[k] for k in shared)
    only_b = sum(b[k] and not a[k] for k in shared)
    return PairedCounts(both, only_a, only_b, len(shared) - both - only_a - only_b)


@dataclass(frozen=True)
class SeedPaired:
    """Two students on the same questions in several seeds, each seed of one beside one of
    the other's."""

    counts: PairedCounts  # over every seed × question pair
    differences: list[int]  # per question: the seeds a is right in minus those b is right in
    seeds: int

    @property
    def questions(self) -> int:
        return len(self.differences)

    @property
    def p_value(self) -> float:
        return sign_flip_exact(self.differences)


def seed_paired(
    pairs: Sequence[tuple[Mapping[Hashable, bool], Mapping[Hashable, bool]]],
) -> SeedPaired:
    """(a's answers, b's answers) per seed, on the item ids present in every one of them. A
    student evaluated once stands in every pair: its answer then counts once per seed of the
    other, as k·u_q in d_q, and its question still counts once."""
    shared = set.intersection(*(a.keys() & b.keys() for a, b in pairs)) if pairs else set()
    items = sorted(shared, key=str)
    per_seed = [paired_counts({q: a[q] for q in items}, {q: b[q] for q in items}) for a, b in pairs]
    counts = PairedCounts(
        sum(c.both_right for c in per_seed),
        sum(c.only_a for c in per_seed),
        sum(c.only_b for c in per_seed),
        sum(c.both_wrong for c in per_seed),
    )
    differences = [sum(a[q] for a, _ in pairs) - sum(b[q] for _, b in pairs) for q in items]
    return SeedPaired(counts, differences, len(pairs))

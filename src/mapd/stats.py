"""Accuracy with a Wilson interval, and McNemar's exact test for two students on the same questions.

    low, high = wilson_interval(77, 613)             # 95 % interval of 77 right of 613
    pair = paired_counts(mapd_right, other_right)    # {item id: right?} for each student
    p = mcnemar_exact(pair.only_a, pair.only_b)      # two-sided, on the discordant items

McNemar's test looks only at the items one student gets right and the other wrong; under
"no difference" each such item is a fair coin, so the p-value is the two-sided binomial
probability of a split at least as uneven. No scipy needed: the sums are exact integers.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
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

"""Parse a reviewer's reply into a score, and aggregate a rationale's scores into a decision.

Only the reviewer's own reply is parsed, never the rationale it reviews, so a rationale that
says "Score: [5]" cannot score itself. The rule follows the paper's release and is stricter
about what counts: the last bracketed number wins (`[4]`, `[ 4 ]`, `[4/5]` is 4, `**[4]**`);
without one, the last "score: N" / "I rate it N", then the last "N/M" or "N out of M",
then the last bare number. A number
outside the scale, or no number at all, is an invalid review.
"""

from __future__ import annotations

import re
import statistics
from typing import Literal

_NUM = r"(\d+(?:\.\d+)?)"
# in order of trust: the last match of the first pattern that matches anywhere wins
_PATTERNS = [
    re.compile(
        r"\[\s*(?:score\s*[:=]?\s*)?(-?" + _NUM[1:] + r"\s*(?:/\s*\d+(?:\.\d+)?\s*)?\]", re.I
    ),
    re.compile(
        r"\b(?:score|rating|rate(?: it| this)?|grade|give(?: it| this)?)\b[^\d\n]{0,12}?" + _NUM,
        re.I,
    ),
    re.compile(_NUM + r"\s*(?:/|out of)\s*\d+(?:\.\d+)?", re.I),
    re.compile(r"(?<![\d.])" + _NUM + r"(?![\d.]*%)"),
]


def parse_review_score(
    reply: str, scale_min: int = 1, scale_max: int = 5, cut_off: bool = False
) -> float | None:
    """The reviewer's score in [scale_min, scale_max], or None for an invalid review.

    A reply cut off at the token limit counts only a bracketed score: without one it
    stopped before its score, and its last number is part of an unfinished sentence."""
    for pattern in _PATTERNS[:1] if cut_off else _PATTERNS:
        matches = pattern.findall(reply)
        if matches:
            score = float(matches[-1])
            return score if scale_min <= score <= scale_max else None
    return None


Aggregate = Literal["mean", "median", "min"]


def aggregate_scores(scores: list[float], how: Aggregate) -> float | None:
    """Combine the valid scores of one rationale; None when there is none."""
    if not scores:
        return None
    if how == "mean":
        return statistics.fmean(scores)
    if how == "median":
        return float(statistics.median(scores))
    return min(scores)

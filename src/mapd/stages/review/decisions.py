"""Accept or reject each rationale from its peer reviews and answer check, and the review statistics.

A rationale is accepted when the aggregate of its valid scores is above the threshold
(paper: mean > 3 on 1..5) and, with `require_correct_answer`, its own final answer matches
the gold answer. The reason of a rejection names the first rule that failed, review first,
so "wrong_answer" means: the reviewers passed it but its answer is wrong. A rationale cut
off at max_tokens ("cut_off") is rejected whatever its reviews: its end is missing, so the
review stage asks nobody about it.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from typing import Any

from mapd.config import ReviewConfig
from mapd.records import Decision, Rationale, Review
from mapd.stages.review.scores import aggregate_scores


def decide(
    rationale: Rationale, reviews: list[Review], review: ReviewConfig, reviewed: bool
) -> Decision:
    """The decision for one rationale; `reviewed` is False for the no-review baselines."""
    scores = {r.reviewer: r.score for r in reviews if r.score is not None}
    agg = aggregate_scores(list(scores.values()), review.aggregate)
    if rationale.cut_off:
        reason = "cut_off"
    elif not reviewed:
        reason = "unreviewed"
    elif agg is None:
        reason = "no_valid_review"
    elif agg <= review.threshold:
        reason = "low_score"
    else:
        reason = "accepted"
    if (
        reason in ("accepted", "unreviewed")
        and review.require_correct_answer
        and not rationale.correct
    ):
        reason = "wrong_answer"
    return Decision(
        rationale_id=rationale.id,
        question_id=rationale.question_id,
        teacher=rationale.teacher,
        accepted=reason in ("accepted", "unreviewed"),
        reason=reason,
        scores=scores,
        aggregate=agg,
        answer_correct=rationale.correct,
    )


def decide_all(
    rationales: list[Rationale], reviews: list[Review], review: ReviewConfig, reviewed: bool
) -> list[Decision]:
    by_rationale: dict[str, list[Review]] = defaultdict(list)
    for r in reviews:
        by_rationale[r.rationale_id].append(r)
    return [decide(r, by_rationale[r.id], review, reviewed) for r in rationales]


def review_statistics(reviews: list[Review], decisions: list[Decision]) -> dict[str, object]:
    """Score histograms per reviewer, pairwise agreement, acceptance per teacher, and where
    the peer review and the answer check disagree."""
    histograms: dict[str, Counter[str]] = defaultdict(Counter)
    for r in reviews:
        histograms[r.reviewer][_score_label(r.score)] += 1

    by_rationale: dict[str, dict[str, float]] = defaultdict(dict)
    for r in reviews:
        if r.score is not None:
            by_rationale[r.rationale_id][r.reviewer] = r.score
    pairs: dict[str, dict[str, int]] = {}
    for scores in by_rationale.values():
        for a, b in itertools.combinations(sorted(scores), 2):
            stats = pairs.setdefault(f"{a}~{b}", {"n": 0, "exact": 0, "within_1": 0})
            stats["n"] += 1
            stats["exact"] += scores[a] == scores[b]
            stats["within_1"] += abs(scores[a] - scores[b]) <= 1
    agreement = {
        k: {
            **v,
            "exact_rate": _rate(v["exact"], v["n"]),
            "within_1_rate": _rate(v["within_1"], v["n"]),
        }
        for k, v in sorted(pairs.items())
    }

    per_teacher: dict[str, dict[str, Any]] = {}
    for d in decisions:
        t = per_teacher.setdefault(
            d.teacher, {"rationales": 0, "accepted": 0, "reasons": Counter()}
        )
        t["rationales"] += 1
        t["accepted"] += d.accepted
        t["reasons"][d.reason] += 1
    # "wrong_answer" after a review (a cascade rejects a wrong answer before any review)
    passed_review = [d for d in decisions if d.reason in ("accepted", "wrong_answer") and d.scores]
    failed_review = [d for d in decisions if d.reason in ("low_score", "no_valid_review")]
    return {
        "reviews": len(reviews),
        "invalid_reviews": sum(r.score is None for r in reviews),
        "rationales": len(decisions),
        "accepted": sum(d.accepted for d in decisions),
        "reasons": dict(Counter(d.reason for d in decisions)),
        "per_teacher": {
            t: {**c, "reasons": dict(c["reasons"])} for t, c in sorted(per_teacher.items())
        },
        "score_histogram": {k: dict(sorted(v.items())) for k, v in sorted(histograms.items())},
        "agreement": agreement,
        "review_vs_answer": {
            "passed_review_wrong_answer": sum(not d.answer_correct for d in passed_review),
            "failed_review_right_answer": sum(d.answer_correct for d in failed_review),
        },
    }


def _score_label(score: float | None) -> str:
    if score is None:
        return "invalid"
    return str(int(score)) if float(score).is_integer() else str(score)


def _rate(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None

"""The cascade committee (`committee.mode: cascade`): pay only for the rationale that is kept.

    result = await run_cascade(cfg, mistakes, oracle)
    result.decisions, result.trace  # per rationale asked; per mistake, the steps taken

Step k asks the k-th teacher of `teacher_order` for a rationale on every mistake still open
(one request list per teacher and step: one batch where the teacher has `batch:`). A
rationale cut off at max_tokens, or whose final answer is wrong under
`review.require_correct_answer`, is rejected at once: no review is paid for. The others are
reviewed one reviewer at a time (the other teachers, cheapest first), each round asking only
for the rationales with fewer than `committee.min_reviews` valid scores, and then the full
committee's rule decides (the aggregate above the threshold). An accepted rationale closes
its mistake; at the end each teacher whose rationale was accepted explains those mistakes
(its feedback), and nobody else is asked for feedback.

The same loop runs live (the teach stage's oracle calls the teachers through the client:
cached, resumable, under the budget) and as a replay from records (`RecordOracle`: the
review stage replays the files the live cascade wrote, or a whole imported release, and
counts what the cascade asked for), so the decisions, the trace and the cost agree.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mapd.config import RunConfig
from mapd.errors import MapdError
from mapd.records import Decision, Feedback, Mistake, Rationale, Review
from mapd.stages.review.decisions import decide

NOT_ASKED = "not_asked"


class Oracle(Protocol):
    """Where the cascade's answers come from: the teachers themselves, or records of them."""

    async def rationales(self, teacher: str, mistakes: list[Mistake]) -> list[Rationale]: ...

    async def reviews(self, reviewer: str, rationales: list[Rationale]) -> list[Review]: ...

    async def feedback(self, teacher: str, mistakes: list[Mistake]) -> list[Feedback]: ...


def _price(cfg: RunConfig, name: str) -> float:
    """Input plus output price per million tokens, at the batch price where `batch:` is on."""
    t = next(t for t in cfg.teachers if t.name == name)
    return (t.price.input_per_mtok + t.price.output_per_mtok) * (
        t.price.batch_discount if t.batch else 1.0
    )


def teacher_order(cfg: RunConfig) -> list[str]:
    """`committee.order`, or cheapest first (input plus output price), then the config's order."""
    if cfg.committee.order:
        return list(cfg.committee.order)
    return sorted((t.name for t in cfg.teachers), key=lambda n: _price(cfg, n))


def reviewer_order(cfg: RunConfig, author: str) -> list[str]:
    """The teachers who may review `author`'s rationale, cheapest first."""
    others = [t.name for t in cfg.teachers if t.name != author]
    return sorted(others, key=lambda n: _price(cfg, n))


@dataclass
class Step:
    """One teacher asked about one mistake, and how its rationale fared."""

    teacher: str
    outcome: str  # a Decision reason: accepted, wrong_answer, cut_off, low_score, ...
    scores: dict[str, float | None] = field(default_factory=dict)  # reviewer -> score

    def as_dict(self, number: int) -> dict[str, Any]:
        return {
            "step": number,
            "teacher": self.teacher,
            "outcome": self.outcome,
            "reviews": self.scores,
        }


@dataclass
class CascadeResult:
    """What the cascade asked for, in the order asked, and what came of it."""

    rationales: list[Rationale] = field(default_factory=list)
    reviews: list[Review] = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)
    decisions: dict[str, Decision] = field(default_factory=dict)  # by rationale id
    trace: dict[str, list[Step]] = field(default_factory=lambda: defaultdict(list))

    def accepted_teacher(self, question_id: str) -> str | None:
        steps = self.trace.get(question_id, [])
        return steps[-1].teacher if steps and steps[-1].outcome == "accepted" else None

    def trace_rows(self, mistakes: Iterable[Mistake]) -> list[dict[str, Any]]:
        """Per mistake: each step (teacher, outcome, reviews) and the teacher kept, if any."""
        return [
            {
                "question_id": m.question_id,
                "steps": [
                    s.as_dict(i + 1) for i, s in enumerate(self.trace.get(m.question_id, []))
                ],
                "accepted": self.accepted_teacher(m.question_id),
            }
            for m in mistakes
        ]

    def step_summary(self, cfg: RunConfig) -> list[dict[str, Any]]:
        """Per step: the teacher asked, how many mistakes, accepted, and why it moved on."""
        out = []
        for number, teacher in enumerate(teacher_order(cfg), start=1):
            outcomes = Counter(
                steps[number - 1].outcome for steps in self.trace.values() if len(steps) >= number
            )
            if not outcomes:
                break
            out.append(
                {
                    "step": number,
                    "teacher": teacher,
                    "asked": sum(outcomes.values()),
                    "accepted": outcomes.pop("accepted", 0),
                    "moved_on": dict(sorted(outcomes.items())),
                }
            )
        return out


def rejected(r: Rationale, reason: str, scores: dict[str, float] | None = None) -> Decision:
    return Decision(
        rationale_id=r.id,
        question_id=r.question_id,
        teacher=r.teacher,
        accepted=False,
        reason=reason,
        scores=scores or {},
        answer_correct=r.correct,
    )


async def run_cascade(cfg: RunConfig, mistakes: list[Mistake], oracle: Oracle) -> CascadeResult:
    """Ask teachers in turn until each mistake has an accepted rationale or none is left."""
    result = CascadeResult()
    by_question = {m.question_id: m for m in mistakes}
    still_open = list(mistakes)
    need = cfg.committee.min_reviews
    for teacher in teacher_order(cfg):
        if not still_open:
            break
        rationales = await oracle.rationales(teacher, still_open)
        result.rationales += rationales
        pending: list[Rationale] = []
        for r in rationales:
            if r.cut_off:
                result.decisions[r.id] = rejected(r, "cut_off")
            elif cfg.review.require_correct_answer and not r.correct:
                result.decisions[r.id] = rejected(r, "wrong_answer")
            else:
                pending.append(r)
        got: dict[str, list[Review]] = defaultdict(list)
        for reviewer in reviewer_order(cfg, teacher):
            short = [r for r in pending if sum(v.score is not None for v in got[r.id]) < need]
            if not short:
                break
            for review in await oracle.reviews(reviewer, short):
                got[review.rationale_id].append(review)
                result.reviews.append(review)
        for r in pending:
            valid = {v.reviewer: v.score for v in got[r.id] if v.score is not None}
            if len(valid) < need:  # the reviewers ran out first
                result.decisions[r.id] = rejected(r, "no_valid_review", valid)
            else:
                result.decisions[r.id] = decide(r, got[r.id], cfg.review, reviewed=True)
        for r in rationales:
            scores = {v.reviewer: v.score for v in got.get(r.id, [])}
            result.trace[r.question_id].append(Step(teacher, result.decisions[r.id].reason, scores))
        closed = {r.question_id for r in rationales if result.decisions[r.id].accepted}
        still_open = [m for m in still_open if m.question_id not in closed]

    explained: dict[str, list[Mistake]] = defaultdict(list)
    for m in mistakes:
        if (teacher := result.accepted_teacher(m.question_id)) is not None:
            explained[teacher].append(by_question[m.question_id])
    # every teacher's feedback runs to its end before a failure is raised: what finished is
    # cached, and a run again pays only for what failed
    answers = await asyncio.gather(
        *(oracle.feedback(t, ms) for t, ms in explained.items()), return_exceptions=True
    )
    for answer in answers:
        if isinstance(answer, BaseException):
            raise answer
    result.feedback = [f for fb in answers if not isinstance(fb, BaseException) for f in fb]
    return result


class RecordOracle:
    """The cascade's answers from records: rationales, reviews and feedback already on file.

    A live cascade's folder holds exactly what it asked for: a record the replay asks for and
    does not find means the teach stage ran with other settings, and stops the replay. An
    imported release (`imported`) holds what the paper's teachers wrote: a rationale it lacks
    leaves the mistake open for the next teacher, a review it lacks counts as a reply without
    a valid score, as an unparseable one would, and feedback it lacks is not trained."""

    def __init__(
        self,
        rationales: list[Rationale],
        reviews: list[Review],
        feedback: list[Feedback],
        imported: bool = False,
    ) -> None:
        self._rationales = {(r.teacher, r.question_id): r for r in rationales}
        self._reviews = {(v.rationale_id, v.reviewer): v for v in reviews}
        self._feedback = {(f.teacher, f.question_id): f for f in feedback}
        self.imported = imported

    def _missing(self, what: str, name: str, keys: list[str]) -> None:
        if keys and not self.imported:
            raise MapdError(
                f"review: the cascade asks for {len(keys)} {what} of {name} that the teach "
                f"stage did not ask for (the first: {keys[0]}); the folder's teach stage ran "
                "with other settings",
                "run from the teach stage: mapd run CONFIG --from teach (asked calls are cached)",
            )

    async def rationales(self, teacher: str, mistakes: list[Mistake]) -> list[Rationale]:
        keys = [(teacher, m.question_id) for m in mistakes]
        missing = [q for t, q in keys if (t, q) not in self._rationales]
        self._missing("rationales", teacher, missing)
        return [self._rationales[k] for k in keys if k in self._rationales]

    async def reviews(self, reviewer: str, rationales: list[Rationale]) -> list[Review]:
        missing = [r.id for r in rationales if (r.id, reviewer) not in self._reviews]
        self._missing("reviews", reviewer, missing)
        return [
            self._reviews.get((r.id, reviewer))
            or Review(
                id=f"{r.id}|{reviewer}",
                rationale_id=r.id,
                question_id=r.question_id,
                author=r.teacher,
                reviewer=reviewer,
                score=None,
                raw="",
            )
            for r in rationales
        ]

    async def feedback(self, teacher: str, mistakes: list[Mistake]) -> list[Feedback]:
        keys = [(teacher, m.question_id) for m in mistakes]
        self._missing("feedback", teacher, [q for t, q in keys if (t, q) not in self._feedback])
        return [self._feedback[k] for k in keys if k in self._feedback]

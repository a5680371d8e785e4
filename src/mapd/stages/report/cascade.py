"""The cascade committee's part of the report: its steps, and its cost beside the full committee's.

    cascade = collect_cascade(run_dir, review_json, review_cfg, teachers, rationales, reviews)
    cost_table(cascade)  # cascade, full committee, ratio: calls, tokens, $, and per example
    cascade_line(review_json["cascade"], teachers=3)  # the line `mapd run` prints

`cascade` is None unless the review stage ran a cascade.

The review stage writes the figures (review.json's `cascade`) and the steps of each mistake
(cascade.jsonl). A folder made by `mapd import-release` holds every teacher's records, most
of which the cascade never asked for: `asked_only` keeps those it did, so the rest of the
report (funnel, review statistics, mistakes) shows what the cascade did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mapd.config import ReviewConfig
from mapd.records import Feedback, Rationale, Review
from mapd.stages.review import CASCADE_TRACE
from mapd.stages.review.decisions import decide_all

CASCADE_CALLS_NOTE = (  # under the stage table: where the cascade's calls are counted
    "Cascade: the teach stage makes the review calls too (each rationale is reviewed before "
    "the next teacher is asked); the review stage replays the records and calls nobody."
)
MOVED_ON = ["wrong_answer", "cut_off", "low_score", "no_valid_review"]  # why the next was asked


def full_committee_calls(mistakes: int, teachers: int) -> int:
    """The full committee's calls on these mistakes: every teacher's feedback and rationale,
    and every other teacher's review of each rationale."""
    return mistakes * (2 * teachers + teachers * (teachers - 1))


@dataclass
class CostRow:
    """One recipe's teacher calls; tokens, dollars and mistakes covered where they are known."""

    recipe: str
    calls: int
    tokens: float | None
    usd: float | None
    covered: int | None

    def per_example(self) -> tuple[float | None, float | None, float | None]:
        """Calls, tokens and dollars per mistake covered (an accepted training example)."""
        if not self.covered:
            return None, None, None
        return tuple(  # type: ignore[return-value]
            None if x is None else x / self.covered for x in (self.calls, self.tokens, self.usd)
        )


@dataclass
class CascadeReport:
    """What the cascade asked, step by step, what it cost, and what the full committee costs."""

    order: list[str]
    steps: list[dict[str, Any]]
    mistakes: int
    covered: int
    cost: dict[str, Any]
    full: dict[str, Any] | None  # the full committee's tally, where all its records are on file
    teachers: int  # the committee's size, for the calls the full committee would make
    not_asked: int = 0
    full_covered: int | None = None
    trace: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # question id -> steps

    @classmethod
    def from_stats(cls, stats: dict[str, Any], teachers: int) -> CascadeReport:
        return cls(
            order=list(stats.get("order") or []),
            steps=list(stats.get("steps") or []),
            mistakes=int(stats.get("mistakes") or 0),
            covered=int(stats.get("covered") or 0),
            cost=dict(stats.get("cost") or {}),
            full=stats.get("full_committee"),
            teachers=teachers,
            not_asked=int(stats.get("not_asked") or 0),
        )

    @property
    def full_calls(self) -> int:
        if self.full:
            return int(self.full["calls"])
        return full_committee_calls(self.mistakes, self.teachers)

    @property
    def ratio(self) -> float | None:
        """The cascade's calls over the full committee's."""
        return self.cost.get("calls", 0) / self.full_calls if self.full_calls else None

    def cost_rows(self) -> tuple[CostRow, CostRow]:
        """The cascade and the full committee; the latter's calls alone, as the count it
        would make, when its records are not on file."""
        c, f = self.cost, self.full
        cascade = CostRow("cascade", c.get("calls", 0), c.get("tokens"), c.get("usd"), self.covered)
        if f:
            full = CostRow(
                "full committee", f["calls"], f.get("tokens"), f.get("usd"), self.full_covered
            )
        else:
            full = CostRow("full committee, calls it would make", self.full_calls, None, None, None)
        return cascade, full


STEP_HEAD = ["step", "teacher", "asked", "accepted", *(m.replace("_", " ") for m in MOVED_ON)]


def step_table(c: CascadeReport) -> list[list[str]]:
    """STEP_HEAD's rows: per step, the mistakes asked, accepted, and why the cascade moved on."""
    return [
        [
            str(s["step"]),
            s["teacher"],
            f"{s['asked']:,}",
            f"{s['accepted']:,}",
            *(f"{s['moved_on'].get(m, 0):,}" for m in MOVED_ON),
        ]
        for s in c.steps
    ]


def covered_text(c: CascadeReport) -> str:
    """ "325 of 387 mistakes covered (84%); 62 left without an accepted rationale"."""
    share = f" ({c.covered / c.mistakes:.0%})" if c.mistakes else ""
    return (
        f"{c.covered:,} of {c.mistakes:,} mistakes covered{share}; "
        f"{c.mistakes - c.covered:,} left without an accepted rationale"
    )


COST_HEAD = [
    "recipe",
    "calls",
    "tokens (est.)",
    "cost",
    "mistakes covered",
    "calls per example",
    "tokens per example",
    "cost per example",
]


def cost_table(c: CascadeReport) -> list[list[str]]:
    """COST_HEAD's rows: the cascade, the full committee, and the ratio of the two."""
    cascade, full = c.cost_rows()

    def cells(row: CostRow) -> list[str]:
        calls, tokens, usd = row.per_example()
        return [
            row.recipe,
            f"{row.calls:,}",
            count_text(row.tokens),
            usd_text(row.usd),
            count_text(row.covered),
            "–" if calls is None else f"{calls:.2f}",
            count_text(tokens),
            usd_text(usd),
        ]

    a, b = cascade.per_example(), full.per_example()
    ratios = [
        over(cascade.calls, full.calls),
        over(cascade.tokens, full.tokens),
        over(cascade.usd, full.usd),
        None,
        *(over(x, y) for x, y in zip(a, b, strict=True)),
    ]
    return [cells(cascade), cells(full), ["ratio", *(ratio_text(x) for x in ratios)]]


def cost_note(c: CascadeReport) -> str:
    """How the cost table's figures were counted."""
    note = (
        "Every feedback, rationale and review is one call; tokens are estimated from the "
        f"prompts and replies ({c.cost.get('tokens_estimated', '4 characters a token')}), "
        "dollars follow each teacher's price. An example is a mistake covered: one with an "
        "accepted rationale."
    )
    if c.full:
        return note
    t = c.teachers
    return note + (
        " This folder holds only what the cascade asked for, so the full committee's row is the "
        f"count of calls it would make on the same mistakes: {c.mistakes:,} × (2×{t} + {t}×{t - 1}) "
        "(every teacher's feedback and rationale, every other teacher's review); its tokens and "
        "cost are unknown."
    )


def over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def count_text(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def usd_text(x: float | None) -> str:
    if x is None:
        return "–"
    return f"${x:,.4f}" if x >= 0.01 or x == 0 else f"${x:.6f}"  # per example: fractions of a cent


def ratio_text(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}x"


def cascade_line(stats: dict[str, Any], teachers: int) -> str:
    """ "cascade: 325 of 387 mistakes covered with 1,314 calls (full committee: 4,644, 0.28x)"."""
    c = CascadeReport.from_stats(stats, teachers)
    full = "full committee" if c.full else "the full committee would make"
    return (
        f"cascade: {c.covered:,} of {c.mistakes:,} mistakes covered with "
        f"{c.cost.get('calls', 0):,} calls ({full}: {c.full_calls:,}, {ratio_text(c.ratio)})"
    )


def collect_cascade(
    run_dir: Path,
    review_json: dict[str, Any] | None,
    review_cfg: dict[str, Any],
    teachers: list[str],
    rationales: list[Rationale] | None,
    reviews: list[Review] | None,
) -> CascadeReport | None:
    """The cascade's figures and steps, or None when the review stage ran no cascade."""
    stats = (review_json or {}).get("cascade")
    if not isinstance(stats, dict):
        return None
    report = CascadeReport.from_stats(stats, len(teachers))
    report.trace = read_trace(run_dir / CASCADE_TRACE)
    if report.full and rationales is not None:
        report.full_covered = full_committee_covered(review_cfg, rationales, reviews or [])
    return report


def read_trace(path: Path) -> dict[str, list[dict[str, Any]]]:
    """cascade.jsonl by question id: the steps of each mistake ({} when missing)."""
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    return {row["question_id"]: row["steps"] for row in rows}


def full_committee_covered(
    review_cfg: dict[str, Any], rationales: list[Rationale], reviews: list[Review]
) -> int | None:
    """Mistakes with an accepted rationale when every teacher's rationale is reviewed by every
    other teacher under the same rule (the records of an imported release hold them all)."""
    try:
        rule = ReviewConfig.model_validate(review_cfg)
    except ValidationError:
        return None  # a config a newer mapd wrote: no figure rather than a wrong one
    decisions = decide_all(rationales, reviews, rule, reviewed=True)
    return len({d.question_id for d in decisions if d.accepted})


def asked_only(
    trace: dict[str, list[dict[str, Any]]],
    feedback: list[Feedback] | None,
    rationales: list[Rationale] | None,
    reviews: list[Review] | None,
) -> tuple[list[Feedback] | None, list[Rationale] | None, list[Review] | None]:
    """The records the cascade asked for: each step's rationale and its reviews, and the
    feedback of the teacher accepted (all of them in a live run; a part in an import)."""
    if not trace:
        return feedback, rationales, reviews
    asked = {(q, s["teacher"]) for q, steps in trace.items() for s in steps}
    reviewed = {
        (q, s["teacher"], who) for q, steps in trace.items() for s in steps for who in s["reviews"]
    }
    kept = {
        (q, steps[-1]["teacher"])
        for q, steps in trace.items()
        if steps and steps[-1]["outcome"] == "accepted"
    }

    def only(records: list[Any] | None, keep: Any) -> list[Any] | None:
        return None if records is None else [r for r in records if keep(r)]

    return (
        only(feedback, lambda f: (f.question_id, f.teacher) in kept),
        only(rationales, lambda r: (r.question_id, r.teacher) in asked),
        only(reviews, lambda v: (v.question_id, v.author, v.reviewer) in reviewed),
    )

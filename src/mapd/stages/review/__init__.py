"""Stage `review`: every rationale is scored by the other teachers, and accepted or rejected.

Reads  mistakes.jsonl, rationales.jsonl (and, in a run made by `mapd import-release`, the
       imported reviews.jsonl instead of calling anyone)
Writes reviews.jsonl (reviewer × rationale: score or None, and the raw reply),
       decisions.jsonl (rationale: accepted or not, and why), review.json (statistics)

A rationale is never reviewed by its own author. `review.reviewers: k` draws k of the
other teachers per rationale with the seed. A rationale cut off at max_tokens is reviewed by
nobody: it is rejected ("cut_off") whatever its reviews would say. Only the reviewer's reply
is parsed for a score. In the no-review baselines (`dataset.mode` other than mapd) nobody is
called and every rationale is accepted unless the answer check rejects it.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from mapd.config import RunConfig
from mapd.llm.client import Client
from mapd.llm.types import Request
from mapd.prompts import Prompts
from mapd.records import Feedback, Mistake, Rationale, Review
from mapd.rundir import RELEASE_MARKER, read_jsonl, write_json, write_jsonl
from mapd.stages.calls import endpoint_settings, open_clients, raise_if_failed
from mapd.stages.review.decisions import decide_all, review_statistics
from mapd.stages.review.scores import parse_review_score
from mapd.stages.teach import TEACHER_FIELDS

NAME = "review"
INPUTS = ["mistakes.jsonl", "rationales.jsonl"]
OUTPUTS = ["reviews.jsonl", "decisions.jsonl", "review.json"]
ALWAYS_RUNS = False


CASCADE_TRACE = "cascade.jsonl"


def settings(cfg: RunConfig) -> dict[str, Any]:
    out = {
        "teachers": [endpoint_settings(t, TEACHER_FIELDS) for t in cfg.teachers],
        # a setting added later enters only when set: earlier reviews stay current
        "review": cfg.review.model_dump(
            exclude={"temperature"} if cfg.review.temperature is None else set()
        ),
        "mode": cfg.dataset.mode,
        "seed": cfg.seed,
        "prompts": {k: v for k, v in cfg.prompts.items() if k == "review"},
    }
    if cfg.committee.mode != "full":
        out["committee"] = cfg.committee.model_dump()
        # the order asked (when unset) and the dollars counted follow the prices
        out["price"] = {t.name: [t.price.model_dump(), bool(t.batch)] for t in cfg.teachers}
    return out


def extra_inputs(cfg: RunConfig) -> list[str]:
    """A cascade's review stage replays the feedback and reviews its teach stage asked for."""
    return ["feedback.jsonl", "reviews.jsonl"] if cfg.committee.mode == "cascade" else []


def extra_outputs(cfg: RunConfig) -> list[str]:
    return [CASCADE_TRACE] if cfg.committee.mode == "cascade" else []


def assign_reviewers(cfg: RunConfig, rationales: list[Rationale]) -> list[tuple[Rationale, str]]:
    """(rationale, reviewer) pairs: every other teacher, or k of them drawn with the seed;
    none for a rationale cut off at max_tokens, which no review could save."""
    names = [t.name for t in cfg.teachers]
    pairs = []
    for r in rationales:
        if r.cut_off:
            continue
        others = [n for n in names if n != r.teacher]
        k = cfg.review.reviewers
        if k is not None and k < len(others):
            others = sorted(random.Random(f"{cfg.seed}:{r.id}").sample(others, k), key=names.index)
        pairs.extend((r, reviewer) for reviewer in others)
    return pairs


async def review_by(
    client: Client,
    pairs: list[tuple[Rationale, str]],
    mistakes: dict[str, Mistake],
    cfg: RunConfig,
    prompts: Prompts,
) -> list[Review]:
    lo, hi = cfg.review.scale_min, cfg.review.scale_max
    requests = [
        Request(
            messages=tuple(prompts.review(mistakes[r.question_id], r.text, lo, hi).messages()),
            tag=r.id,
            max_tokens=cfg.review.max_tokens,
            temperature=cfg.review.temperature,
        )
        for r, _ in pairs
    ]
    results = await client.complete_many(requests, desc=f"review: {client.name}")
    raise_if_failed("review", f"reviewer {client.name}", results)
    return [
        Review(
            id=f"{r.id}|{client.name}",
            rationale_id=r.id,
            question_id=r.question_id,
            author=r.teacher,
            reviewer=client.name,
            score=parse_review_score(res.text, lo, hi, cut_off=res.completion.cut_off),
            raw=res.text,
            finish_reason=res.completion.finish_reason,
            reasoning=res.completion.reasoning,
        )
        for (r, _), res in zip(pairs, results, strict=True)
    ]


async def gather_reviews(
    cfg: RunConfig, run_dir: Path, rationales: list[Rationale]
) -> list[Review]:
    mistakes = {m.question_id: m for m in read_jsonl(run_dir / "mistakes.jsonl", Mistake)}
    prompts = Prompts(cfg.prompts)
    pairs = assign_reviewers(cfg, rationales)
    by_reviewer = {t.name: [p for p in pairs if p[1] == t.name] for t in cfg.teachers}
    async with open_clients(cfg, run_dir, "review", cfg.teachers) as clients:
        outcomes = await asyncio.gather(
            *(
                review_by(clients[name], ps, mistakes, cfg, prompts)
                for name, ps in by_reviewer.items()
                if ps
            ),
            return_exceptions=True,
        )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    reviews = {rev.id: rev for o in outcomes if not isinstance(o, BaseException) for rev in o}
    # file order: rationale by rationale, reviewers in committee order
    return [reviews[f"{r.id}|{reviewer}"] for r, reviewer in pairs]


async def replay_cascade(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Decisions, trace and cost of the cascade, replayed from the records on file."""
    from mapd.stages.review.cascade import (
        NOT_ASKED,
        RecordOracle,
        rejected,
        run_cascade,
        teacher_order,
    )
    from mapd.stages.review.cost import full_committee_records, tally

    mistakes = read_jsonl(run_dir / "mistakes.jsonl", Mistake)
    rationales = read_jsonl(run_dir / "rationales.jsonl", Rationale)
    feedback = read_jsonl(run_dir / "feedback.jsonl", Feedback)
    path = run_dir / "reviews.jsonl"
    on_file = read_jsonl(path, Review) if path.exists() else []
    imported = (run_dir / RELEASE_MARKER).exists()
    oracle = RecordOracle(rationales, on_file, feedback, imported=imported)
    result = await run_cascade(cfg, mistakes, oracle)
    decisions = [result.decisions.get(r.id) or rejected(r, NOT_ASKED) for r in rationales]
    write_jsonl(run_dir / "decisions.jsonl", decisions)
    write_jsonl(run_dir / CASCADE_TRACE, result.trace_rows(mistakes))
    asked = [d for d in decisions if d.reason != NOT_ASKED]
    stats = review_statistics(result.reviews, asked)
    cost = tally(cfg, mistakes, result.feedback, result.rationales, result.reviews)
    # the full committee's calls where every teacher's records are on file: an import
    full_records = full_committee_records(cfg, feedback, rationales, on_file)
    complete = imported and len(full_records[0]) == len(full_records[1]) == len(cfg.teachers) * len(
        mistakes
    )
    full = tally(cfg, mistakes, *full_records) if complete else None
    covered = sum(result.accepted_teacher(m.question_id) is not None for m in mistakes)
    stats["cascade"] = {
        "order": teacher_order(cfg),
        "steps": result.step_summary(cfg),
        "mistakes": len(mistakes),
        "covered": covered,
        "cost": cost,
        "full_committee": full,
        "not_asked": len(decisions) - len(asked),
    }
    return stats


async def run(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    if cfg.committee.mode == "cascade":
        stats = await replay_cascade(cfg, run_dir)
        write_json(run_dir / "review.json", stats)
        return stats
    (run_dir / CASCADE_TRACE).unlink(missing_ok=True)
    rationales = read_jsonl(run_dir / "rationales.jsonl", Rationale)
    reviewed = cfg.dataset.mode == "mapd"
    if not reviewed:
        reviews: list[Review] = []
    elif (run_dir / RELEASE_MARKER).exists():
        reviews = read_jsonl(run_dir / "reviews.jsonl", Review)
    else:
        reviews = await gather_reviews(cfg, run_dir, rationales)
    decisions = decide_all(rationales, reviews, cfg.review, reviewed)
    if not (run_dir / RELEASE_MARKER).exists():
        write_jsonl(run_dir / "reviews.jsonl", reviews)
    write_jsonl(run_dir / "decisions.jsonl", decisions)
    stats = review_statistics(reviews, decisions)
    write_json(run_dir / "review.json", stats)
    return stats

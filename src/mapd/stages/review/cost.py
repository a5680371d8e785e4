"""What a recipe's teacher calls cost, counted from the records: calls, tokens and dollars.

    tally(cfg, mistakes, feedback, rationales, reviews)  # {"calls": 4644, "tokens": ..., ...}
    recipe_cost(cfg, run_dir)  # the calls this folder's recipe makes (replayed when imported)

Every feedback, rationale and review record is one call. Its tokens are estimated from
characters (the prompt as it is sent, with the teacher's system prompt, and the reply, each
4 characters a token): the paper's release records no usage, and a replay asks nobody, so
recipes are compared on one measure. A live run's actual usage, cached calls included, is in
its calls ledger (`mapd status`, the report's cost table). Dollars follow each teacher's
`price` (times `batch_discount` where it has `batch:`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from mapd.config import RunConfig
from mapd.prompts import Prompts
from mapd.records import Feedback, Mistake, Rationale, Review
from mapd.rundir import read_json, read_jsonl

CHARS_PER_TOKEN = 4


def _tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _chars(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) for m in messages)


def tally(
    cfg: RunConfig,
    mistakes: list[Mistake],
    feedback: list[Feedback],
    rationales: list[Rationale],
    reviews: list[Review],
) -> dict[str, Any]:
    """Calls, estimated tokens and dollars of these records, in all and per teacher."""
    prompts = Prompts(cfg.prompts)
    teachers = {t.name: t for t in cfg.teachers}
    by_question = {m.question_id: m for m in mistakes}
    texts = {r.id: r.text for r in rationales}
    lo, hi = cfg.review.scale_min, cfg.review.scale_max
    per: dict[str, dict[str, float]] = defaultdict(
        lambda: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "usd": 0.0}
    )

    def add(teacher: str, prompt: list[dict[str, str]], reply: str) -> None:
        t = teachers.get(teacher)
        row = per[teacher]
        p, c = _tokens(_chars(prompt)), _tokens(len(reply))
        row["calls"] += 1
        row["prompt_tokens"] += p
        row["completion_tokens"] += c
        if t is not None:
            factor = t.price.batch_discount if t.batch else 1.0
            row["usd"] += factor * (p * t.price.input_per_mtok + c * t.price.output_per_mtok) / 1e6

    def system(teacher: str) -> str | None:
        t = teachers.get(teacher)
        return t.system_prompt if t is not None else None

    for f in feedback:
        m = by_question[f.question_id]
        add(f.teacher, prompts.feedback(m).messages(system(f.teacher)), f.text)
    for r in rationales:
        m = by_question[r.question_id]
        prompt = prompts.rationale(m.question, m.options, m.answer_type)
        add(r.teacher, prompt.messages(system(r.teacher)), r.text)
    for v in reviews:
        m = by_question[v.question_id]
        prompt = prompts.review(m, texts.get(v.rationale_id, ""), lo, hi)
        add(v.reviewer, prompt.messages(system(v.reviewer)), v.raw)
    total = {
        "calls": sum(int(r["calls"]) for r in per.values()),
        "prompt_tokens": sum(int(r["prompt_tokens"]) for r in per.values()),
        "completion_tokens": sum(int(r["completion_tokens"]) for r in per.values()),
        "usd": round(sum(r["usd"] for r in per.values()), 6),
    }
    total["tokens"] = total["prompt_tokens"] + total["completion_tokens"]
    total["per_teacher"] = {
        name: {**{k: int(v) for k, v in row.items() if k != "usd"}, "usd": round(row["usd"], 6)}
        for name, row in sorted(per.items())
    }
    total["calls_by_kind"] = {
        "feedback": len(feedback),
        "rationale": len(rationales),
        "review": len(reviews),
    }
    total["tokens_estimated"] = f"{CHARS_PER_TOKEN} characters a token"
    return total


def full_committee_records(
    cfg: RunConfig, feedback: list[Feedback], rationales: list[Rationale], reviews: list[Review]
) -> tuple[list[Feedback], list[Rationale], list[Review]]:
    """The records the full committee's recipe (this folder's dataset.mode) asks for."""
    from mapd.stages.review import assign_reviewers

    mode = cfg.dataset.mode
    if mode == "single_teacher":
        only = cfg.dataset.teacher
        return (
            [f for f in feedback if f.teacher == only],
            [r for r in rationales if r.teacher == only],
            [],
        )
    if mode == "committee_no_review":
        return feedback, rationales, []
    asked = {(r.id, reviewer) for r, reviewer in assign_reviewers(cfg, rationales)}
    return feedback, rationales, [v for v in reviews if (v.rationale_id, v.reviewer) in asked]


def recipe_cost(cfg: RunConfig, run_dir: Path) -> dict[str, Any] | None:
    """The teacher calls of this folder's recipe (a cascade's as its review stage counted
    them), or None when its records are not all there."""
    if cfg.committee.mode == "cascade":
        stats = read_json(run_dir / "review.json") if (run_dir / "review.json").exists() else {}
        return (stats.get("cascade") or {}).get("cost")
    names = ["mistakes.jsonl", "feedback.jsonl", "rationales.jsonl"]
    if not all((run_dir / n).exists() for n in names):
        return None
    mistakes = read_jsonl(run_dir / "mistakes.jsonl", Mistake)
    feedback = read_jsonl(run_dir / "feedback.jsonl", Feedback)
    rationales = read_jsonl(run_dir / "rationales.jsonl", Rationale)
    path = run_dir / "reviews.jsonl"
    reviews = read_jsonl(path, Review) if path.exists() else []
    return tally(cfg, mistakes, *full_committee_records(cfg, feedback, rationales, reviews))

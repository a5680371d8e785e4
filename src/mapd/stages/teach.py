"""Stage `teach`: every teacher explains every mistake and writes its own rationale.

Reads  mistakes.jsonl
Writes feedback.jsonl (teacher × mistake), rationales.jsonl (teacher × mistake, with the
       answer check: the rationale's own final answer against the gold answer)

Feedback prompts hold the question, the student's answer and the correct final answer as a
hint; rationale prompts hold the question alone. Teachers run concurrently, each within
its own endpoint limits.

With `committee.mode: cascade` this stage runs the cascade (review/cascade.py): teachers in
turn, each asked only about the mistakes still open, reviewers one at a time, feedback only
from the teacher whose rationale was accepted. It then also writes the reviews it asked for
(reviews.jsonl); the review stage replays them and calls nobody.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mapd.answers import answers_match, extract_answer
from mapd.config import RunConfig
from mapd.llm.client import Client
from mapd.llm.types import CallResult, Request
from mapd.prompts import Prompts
from mapd.records import Feedback, Mistake, Rationale, Review
from mapd.rundir import read_jsonl, write_jsonl
from mapd.stages.calls import endpoint_settings, open_clients, raise_if_failed

NAME = "teach"
INPUTS = ["mistakes.jsonl"]
OUTPUTS = ["feedback.jsonl", "rationales.jsonl"]
ALWAYS_RUNS = False
TEACHER_FIELDS = {"name", "model", "backend", "base_url", "sampling", "system_prompt"}


def settings(cfg: RunConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "teachers": [endpoint_settings(t, TEACHER_FIELDS) for t in cfg.teachers],
        "prompts": {
            k: v for k, v in cfg.prompts.items() if k in ("feedback", "rationale", "answer_format")
        },
    }
    if cfg.committee.mode == "cascade":  # the cascade asks for the reviews here
        from mapd.stages.review import settings as review_settings

        out |= {
            "cascade": review_settings(cfg),
            "price": [t.price.model_dump() for t in cfg.teachers],
        }
    return out


def extra_outputs(cfg: RunConfig) -> list[str]:
    """A cascade asks for the reviews here."""
    return ["reviews.jsonl"] if cfg.committee.mode == "cascade" else []


def teaching_requests(
    prompts: Prompts, mistakes: list[Mistake]
) -> tuple[list[Request], list[Request]]:
    feedback, rationale = [], []
    for m in mistakes:
        fb = prompts.feedback(m)
        feedback.append(Request(messages=tuple(fb.messages()), tag=m.question_id))
        rp = prompts.rationale(m.question, m.options, m.answer_type)
        rationale.append(Request(messages=tuple(rp.messages()), tag=m.question_id))
    return feedback, rationale


def feedback_record(teacher: str, m: Mistake, r: CallResult) -> Feedback:
    return Feedback(
        id=f"{m.question_id}|{teacher}",
        question_id=m.question_id,
        teacher=teacher,
        text=r.text,
        finish_reason=r.completion.finish_reason if r.completion else None,
        reasoning=r.completion.reasoning if r.completion else None,
    )


def rationale_record(teacher: str, m: Mistake, r: CallResult) -> Rationale:
    """The teacher's rationale with the answer check: its own final answer against the gold."""
    pred = extract_answer(r.text, m.answer_type, m.options or None)
    return Rationale(
        id=f"{m.question_id}|{teacher}",
        question_id=m.question_id,
        teacher=teacher,
        text=r.text,
        extracted=pred,
        correct=answers_match(pred, m.answer, m.answer_type),
        finish_reason=r.completion.finish_reason if r.completion else None,
        reasoning=r.completion.reasoning if r.completion else None,
    )


async def teach_one(
    client: Client, mistakes: list[Mistake], prompts: Prompts
) -> tuple[list[Feedback], list[Rationale]]:
    fb_requests, r_requests = teaching_requests(prompts, mistakes)
    results = await client.complete_many([*fb_requests, *r_requests], desc=f"teach: {client.name}")
    raise_if_failed("teach", f"teacher {client.name}", results)
    n = len(mistakes)
    feedback = [
        feedback_record(client.name, m, r) for m, r in zip(mistakes, results[:n], strict=True)
    ]
    rationales = [
        rationale_record(client.name, m, r) for m, r in zip(mistakes, results[n:], strict=True)
    ]
    return feedback, rationales


class TeacherOracle:
    """The cascade's answers from the teachers themselves, through the run's clients."""

    def __init__(self, cfg: RunConfig, clients: dict[str, Client], mistakes: list[Mistake]) -> None:
        self.cfg, self.clients, self.prompts = cfg, clients, Prompts(cfg.prompts)
        self.mistakes = {m.question_id: m for m in mistakes}
        self.step = 0

    async def rationales(self, teacher: str, mistakes: list[Mistake]) -> list[Rationale]:
        self.step += 1
        _, requests = teaching_requests(self.prompts, mistakes)
        client = self.clients[teacher]
        desc = f"teach: step {self.step}, {teacher}"
        results = await client.complete_many(requests, desc=desc)
        raise_if_failed("teach", f"teacher {teacher}", results)
        return [rationale_record(teacher, m, r) for m, r in zip(mistakes, results, strict=True)]

    async def reviews(self, reviewer: str, rationales: list[Rationale]) -> list[Review]:
        from mapd.stages.review import review_by

        pairs = [(r, reviewer) for r in rationales]
        client = self.clients[reviewer]
        return await review_by(client, pairs, self.mistakes, self.cfg, self.prompts)

    async def feedback(self, teacher: str, mistakes: list[Mistake]) -> list[Feedback]:
        requests, _ = teaching_requests(self.prompts, mistakes)
        results = await self.clients[teacher].complete_many(requests, desc=f"feedback: {teacher}")
        raise_if_failed("teach", f"teacher {teacher}", results)
        return [feedback_record(teacher, m, r) for m, r in zip(mistakes, results, strict=True)]


async def run_cascade_stage(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    from mapd.stages.review.cascade import run_cascade

    mistakes = read_jsonl(run_dir / "mistakes.jsonl", Mistake)
    async with open_clients(cfg, run_dir, "teach", cfg.teachers) as clients:
        result = await run_cascade(cfg, mistakes, TeacherOracle(cfg, clients, mistakes))
    write_jsonl(run_dir / "feedback.jsonl", result.feedback)
    write_jsonl(run_dir / "rationales.jsonl", result.rationales)
    write_jsonl(run_dir / "reviews.jsonl", result.reviews)
    return {
        "mistakes": len(mistakes),
        "feedback": len(result.feedback),
        "rationales": len(result.rationales),
        "reviews": len(result.reviews),
        "cascade_steps": result.step_summary(cfg),
        "covered": sum(result.accepted_teacher(m.question_id) is not None for m in mistakes),
    }


async def run(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    if cfg.committee.mode == "cascade":
        return await run_cascade_stage(cfg, run_dir)
    mistakes = read_jsonl(run_dir / "mistakes.jsonl", Mistake)
    prompts = Prompts(cfg.prompts)
    async with open_clients(cfg, run_dir, "teach", cfg.teachers) as clients:
        outcomes = await asyncio.gather(
            *(teach_one(clients[t.name], mistakes, prompts) for t in cfg.teachers),
            return_exceptions=True,
        )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    per_teacher = [o for o in outcomes if not isinstance(o, BaseException)]
    feedback = [f for fb, _ in per_teacher for f in fb]
    rationales = [r for _, rs in per_teacher for r in rs]
    write_jsonl(run_dir / "feedback.jsonl", feedback)
    write_jsonl(run_dir / "rationales.jsonl", rationales)
    return {
        "mistakes": len(mistakes),
        "feedback": len(feedback),
        "rationales": len(rationales),
        "cut_off_per_teacher": {
            t.name: sum(x.cut_off for x in [*feedback, *rationales] if x.teacher == t.name)
            for t in cfg.teachers
        },
        "rationales_correct_per_teacher": {
            t.name: sum(r.correct for r in rationales if r.teacher == t.name) for t in cfg.teachers
        },
    }

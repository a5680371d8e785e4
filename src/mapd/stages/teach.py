"""Stage `teach`: every teacher explains every mistake and writes its own rationale.

Reads  mistakes.jsonl
Writes feedback.jsonl (teacher × mistake), rationales.jsonl (teacher × mistake, with the
       answer check: the rationale's own final answer against the gold answer)

Feedback prompts hold the question, the student's answer and the correct final answer as a
hint; rationale prompts hold the question alone. Teachers run concurrently, each within
its own endpoint limits.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mapd.answers import answers_match, extract_answer
from mapd.config import RunConfig
from mapd.llm.client import Client
from mapd.llm.types import Request
from mapd.prompts import Prompts
from mapd.records import Feedback, Mistake, Rationale
from mapd.rundir import read_jsonl, write_jsonl
from mapd.stages.calls import endpoint_settings, open_clients, raise_if_failed

NAME = "teach"
INPUTS = ["mistakes.jsonl"]
OUTPUTS = ["feedback.jsonl", "rationales.jsonl"]
ALWAYS_RUNS = False
TEACHER_FIELDS = {"name", "model", "backend", "base_url", "sampling", "system_prompt"}


def settings(cfg: RunConfig) -> dict[str, Any]:
    return {
        "teachers": [endpoint_settings(t, TEACHER_FIELDS) for t in cfg.teachers],
        "prompts": {
            k: v for k, v in cfg.prompts.items() if k in ("feedback", "rationale", "answer_format")
        },
    }


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


async def teach_one(
    client: Client, mistakes: list[Mistake], prompts: Prompts
) -> tuple[list[Feedback], list[Rationale]]:
    fb_requests, r_requests = teaching_requests(prompts, mistakes)
    results = await client.complete_many([*fb_requests, *r_requests], desc=f"teach: {client.name}")
    raise_if_failed("teach", f"teacher {client.name}", results)
    n = len(mistakes)
    feedback = [
        Feedback(
            id=f"{m.question_id}|{client.name}",
            question_id=m.question_id,
            teacher=client.name,
            text=r.text,
            finish_reason=r.completion.finish_reason if r.completion else None,
            reasoning=r.completion.reasoning if r.completion else None,
        )
        for m, r in zip(mistakes, results[:n], strict=True)
    ]
    rationales = []
    for m, r in zip(mistakes, results[n:], strict=True):
        pred = extract_answer(r.text, m.answer_type, m.options or None)
        rationales.append(
            Rationale(
                id=f"{m.question_id}|{client.name}",
                question_id=m.question_id,
                teacher=client.name,
                text=r.text,
                extracted=pred,
                correct=answers_match(pred, m.answer, m.answer_type),
                finish_reason=r.completion.finish_reason if r.completion else None,
                reasoning=r.completion.reasoning if r.completion else None,
            )
        )
    return feedback, rationales


async def run(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
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

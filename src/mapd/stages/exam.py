"""Stage `exam`: the student answers every training question; its wrong answers become mistakes.

Reads  the task's training split (hub, local files or generator; see `mapd tasks`)
Writes attempts.jsonl (every answer), mistakes.jsonl (the wrong ones), exam.json (accuracy,
       answers cut off at the student's sampling.max_tokens)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapd.answers import answers_match, extract_answer
from mapd.config import ModelEndpoint, RunConfig
from mapd.llm.types import Completion, Request
from mapd.prompts import Prompts, plain_prompt
from mapd.records import Attempt, Mistake, Question
from mapd.rundir import write_json, write_jsonl
from mapd.stages.calls import endpoint_settings, open_clients, raise_if_failed
from mapd.tasks import load_questions

NAME = "exam"
INPUTS: list[str] = []
OUTPUTS = ["attempts.jsonl", "mistakes.jsonl", "exam.json"]
ALWAYS_RUNS = False


def settings(cfg: RunConfig) -> dict[str, Any]:
    s = cfg.student
    return {
        "task": cfg.task.model_dump(),
        "seed": cfg.seed,
        "prompt": cfg.prompts.get("rationale"),
        "answer_format": cfg.prompts.get("answer_format"),
        "student": endpoint_settings(
            s, {"model", "backend", "base_url", "sampling", "system_prompt"}
        ),
    }


def rationale_request(
    prompts: Prompts, q: Question, sample: int = 0, plain: bool = False, **sampling: Any
) -> Request:
    """The rationale-task prompt for `q`; `plain` renders it in the paper's instruction format
    (for a student trained with `train.prompt_format: plain`, served without a chat template)."""
    prompt = prompts.rationale(q.question, q.options, q.answer_type)
    if plain:
        content = plain_prompt(prompt.instruction, prompt.input)
        return Request(
            messages=({"role": "user", "content": content},), sample=sample, tag=q.id, **sampling
        )
    return Request(messages=tuple(prompt.messages()), sample=sample, tag=q.id, **sampling)


async def ask_student(
    cfg: RunConfig,
    run_dir: Path,
    stage: str,
    student: ModelEndpoint,
    requests: list[Request],
    scope: str | None = None,
) -> list[Completion]:
    """The student's replies to `requests`, in order (shared by exam and eval)."""
    async with open_clients(cfg, run_dir, stage, [student], scope) as clients:
        results = await clients[student.name].complete_many(
            requests, desc=f"{stage}: {student.name}"
        )
    raise_if_failed(stage, "student", results)
    return [r.completion for r in results if r.completion is not None]


def grade(q: Question, output: str) -> Attempt:
    pred = extract_answer(output, q.answer_type, q.options or None)
    return Attempt(
        question_id=q.id,
        output=output,
        extracted=pred,
        correct=answers_match(pred, q.answer, q.answer_type),
    )


async def run(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    loaded = load_questions(cfg.task, "train", cfg.seed)
    prompts = Prompts(cfg.prompts)
    requests = [rationale_request(prompts, q) for q in loaded.questions]
    replies = await ask_student(cfg, run_dir, "exam", cfg.student, requests)
    attempts = [grade(q, r.text) for q, r in zip(loaded.questions, replies, strict=True)]
    by_id = {q.id: q for q in loaded.questions}
    mistakes = [
        Mistake(
            question_id=a.question_id,
            question=by_id[a.question_id].question,
            answer=by_id[a.question_id].answer,
            answer_type=by_id[a.question_id].answer_type,
            options=by_id[a.question_id].options,
            student_output=a.output,
            student_answer=a.extracted,
        )
        for a in attempts
        if not a.correct
    ]
    write_jsonl(run_dir / "attempts.jsonl", attempts)
    write_jsonl(run_dir / "mistakes.jsonl", mistakes)
    correct = sum(a.correct for a in attempts)
    summary = {
        "questions": len(attempts),
        "skipped_rows": loaded.skipped,
        "correct": correct,
        "accuracy": round(correct / len(attempts), 4) if attempts else None,
        "no_answer": sum(a.extracted is None for a in attempts),
        "mistakes": len(mistakes),
        "cut_off": sum(r.cut_off for r in replies),  # no final answer, so mostly mistakes
        "max_tokens": cfg.student.sampling.max_tokens,
    }
    write_json(run_dir / "exam.json", summary)
    return summary

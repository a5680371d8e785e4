"""Stage `eval`: accuracy of the untrained and the trained student on a task split.

Reads  the task's `eval.split` (default test), student/manifest.json (after training)
Writes eval/<label>/predictions.jsonl (output, extracted answer, correct) and
       eval/<label>/metrics.json (accuracy, invalid-answer rate, mean output tokens, answers
       cut off at eval.max_tokens, and a task's extra metrics, e.g. lm-evaluation-harness's
       for gsm8k), labels `base` and `trained`

The prompt is the rationale-task prompt the student was trained on. Greedy by default;
`eval.samples: k` (with a temperature) gives majority-vote accuracy, sample i drawn with
seed + i. The trained student is asked through `eval.trained`, an OpenAI-compatible endpoint
such as vLLM serving the adapter (or loading it, `adapter: load`), or in-process from
student/ (merged model, full model or LoRA adapter on its base), also when the untrained
student is served over HTTP (see `mapd.stages.trained`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from mapd.answers import answers_match
from mapd.config import ModelEndpoint, RunConfig
from mapd.llm.cache import folder_stamp
from mapd.llm.vllm_adapters import adapter_digest
from mapd.prompts import Prompts
from mapd.records import Question
from mapd.rundir import write_json, write_jsonl
from mapd.stages.exam import ask_student, grade, rationale_request
from mapd.stages.trained import saved_student, trained_student
from mapd.tasks import get_task, load_questions

INPUTS = ["student/manifest.json"]
OUTPUTS = ["eval/trained/metrics.json"]
NAME = "eval"  # the module is `evaluate`: `eval` is a builtin
ALWAYS_RUNS = False


def settings(cfg: RunConfig) -> dict[str, Any]:
    from mapd.stages.exam import settings as exam_settings

    found = {"exam": exam_settings(cfg), "eval": cfg.eval.model_dump(mode="json")}
    if cfg.student.backend == "openai" and cfg.eval.trained is None:
        # an HTTP student's trained accuracy used to be the server's base model's: such an
        # eval is run again, now in-process
        found["trained_in_process"] = True
    return found


def majority(answers: list[str | None]) -> str | None:
    """The most common extracted answer (first seen wins a tie); None when none was extracted."""
    counts = Counter(a for a in answers if a is not None)
    return max(counts, key=lambda a: (counts[a], -answers.index(a))) if counts else None


async def evaluate(
    cfg: RunConfig,
    run_dir: Path,
    label: str,
    student: ModelEndpoint,
    questions: list[Question],
    scope: str | None = None,
) -> dict[str, Any]:
    """Ask, grade and write eval/<label>/; return the metrics. `scope` goes into the cache
    keys (see `served_weights`)."""
    e = cfg.eval
    prompts = Prompts(cfg.prompts)
    requests = [
        rationale_request(
            prompts,
            q,
            sample=i,
            plain=not getattr(student, "chat_template", True),
            temperature=e.temperature,
            max_tokens=e.max_tokens,
            seed=cfg.seed,
        )
        for q in questions
        for i in range(e.samples)
    ]
    replies = await ask_student(cfg, run_dir, f"eval-{label}", student, requests, scope)
    outputs = [r.text for r in replies]
    rows, correct, invalid = [], 0, 0
    for n, q in enumerate(questions):
        samples = [grade(q, out) for out in outputs[n * e.samples : (n + 1) * e.samples]]
        voted = majority([s.extracted for s in samples])
        ok = answers_match(voted, q.answer, q.answer_type)
        correct += ok
        invalid += voted is None
        rows.append(
            {
                "question_id": q.id,
                "gold": q.answer,
                "extracted": voted,
                "correct": ok,
                "output": samples[0].output,
                **({"samples": [s.model_dump() for s in samples]} if e.samples > 1 else {}),
            }
        )
    n = len(questions) or 1
    metrics: dict[str, Any] = {
        "label": label,
        "model": student.model,
        "backend": student.backend,
        "split": e.split,
        "n": len(questions),
        "samples": e.samples,
        "correct": correct,
        "accuracy": round(correct / n, 4),
        "invalid_rate": round(invalid / n, 4),
        "mean_output_tokens": round(
            sum(r.completion_tokens for r in replies) / max(len(replies), 1), 1
        ),
        # an answer cut off at the limit usually has no final answer: counted as wrong
        "cut_off": sum(r.cut_off for r in replies),
        "max_tokens": e.max_tokens,
    }
    if extra := get_task(cfg.task.name).extra_metrics:
        firsts = [(r["output"], r["gold"]) for r in rows]
        metrics |= {k: round(v, 4) for k, v in extra(firsts).items()}
    out = run_dir / "eval" / label
    write_jsonl(out / "predictions.jsonl", rows)
    write_json(out / "metrics.json", metrics)
    return metrics


def eval_questions(cfg: RunConfig) -> list[Question]:
    questions = load_questions(cfg.task, cfg.eval.split, cfg.seed).questions
    return questions[: cfg.eval.limit] if cfg.eval.limit else questions


async def run(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    questions = eval_questions(cfg)
    trained = trained_student(cfg, run_dir)  # first: a trained student out of reach sends nothing
    summary: dict[str, Any] = {}
    if cfg.eval.base:
        summary["base"] = await evaluate(cfg, run_dir, "base", cfg.student, questions)
    summary["trained"] = await evaluate(
        cfg, run_dir, "trained", trained, questions, served_weights(cfg, run_dir)
    )
    return summary


def served_weights(cfg: RunConfig, run_dir: Path) -> str | None:
    """For a trained student served by `eval.trained`: a stamp of the weights in student/,
    an adapter's sha256 (a full model's files' names, sizes and times: hashing gigabytes on
    every eval would cost more than it proves).

    The server answers under a model name that stays the same when the student is trained
    again; with the stamp in the cache key, a retrained student is asked again instead of
    being given the previous one's cached replies. (In-process, the backend stamps the
    folder it loads itself.)"""
    if cfg.eval.trained is None or not (run_dir / "student" / "manifest.json").exists():
        return None
    folder = saved_student(run_dir).trained
    if (folder / "adapter_config.json").is_file():
        return "sha256:" + adapter_digest(folder)
    return folder_stamp(folder) if folder.is_dir() else None

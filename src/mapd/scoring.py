"""Scoring a file of model outputs against gold answers: the library behind `mapd score`.

    report = score_file("gsm8k", Path("outputs.jsonl"), output=Path("scored.jsonl"))
    report.accuracy, report.lm_eval_flexible

Each input line is a JSON object with `output` (the model's text) and either `answer` (the
gold answer) or `id` (a question id, whose gold answer is looked up in the task's source:
`path` for a local copy, or the task section of a run config); `gold` and `question_id`,
as in a run's eval/*/predictions.jsonl, are read as the same. The scored file repeats
every input line with `extracted` and `correct` added. For GSM8K, accuracy under
lm-evaluation-harness's strict-match and flexible-extract filters is reported too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mapd.answers import (
    answers_match,
    extract_answer,
    normalize_gold,
)
from mapd.config import TaskConfig
from mapd.errors import MapdError
from mapd.records import AnswerType, Question
from mapd.rundir import write_jsonl
from mapd.tasks import SPLITS, get_task, load_questions
from mapd.tasks.files import read_jsonl_rows


@dataclass
class ScoreReport:
    """Counts of one scored file; the lm_eval_* fields are None for tasks other than gsm8k."""

    total: int
    correct: int
    no_answer: int
    lm_eval_strict: float | None = None
    lm_eval_flexible: float | None = None

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def gold_questions(cfg: TaskConfig, seed: int = 731) -> dict[str, Question]:
    """Every question of the task's source (both splits, no limit), by id."""
    cfg = cfg.model_copy(update={"limit": None})
    return {q.id: q for split in SPLITS for q in load_questions(cfg, split, seed).questions}


def score_file(
    task: str,
    input_path: Path,
    output: Path | None = None,
    task_cfg: TaskConfig | None = None,
    answer_type: AnswerType | None = None,
    seed: int = 731,
) -> ScoreReport:
    """Score every line of `input_path`; `task_cfg` says where to find gold answers by id."""
    spec = get_task(task)
    kind = answer_type or spec.answer_type or (task_cfg.answer_type if task_cfg else None)
    if kind is None:
        raise MapdError(
            f"task {task} needs an answer type", "pass --answer-type or a config with one"
        )
    if not input_path.is_file():
        raise MapdError(f"{input_path}: file not found", "give --input a JSONL file of outputs")
    if output is not None and output.is_dir():
        raise MapdError(
            f"--output {output} is a folder", f"give a file name, e.g. {output / 'scored.jsonl'}"
        )
    rows = [_check_line(location, row) for location, row in read_jsonl_rows(input_path)]
    golds: dict[str, Question] | None = None
    if any("answer" not in row for _, row in rows):
        if task_cfg is None:
            raise MapdError(
                f"{input_path}: lines without `answer` need the task's data to look up ids",
                "pass --path (a local copy of the dataset) or --config RUN.yaml",
            )
        golds = gold_questions(task_cfg, seed)
    report = ScoreReport(total=0, correct=0, no_answer=0)
    scored, firsts = [], []
    for location, row in rows:
        gold, options = _gold(location, row, kind, golds)
        extracted = extract_answer(row["output"], kind, options)
        correct = answers_match(extracted, gold, kind)
        report.total += 1
        report.correct += correct
        report.no_answer += extracted is None
        scored.append({**row, "extracted": extracted, "correct": correct})
        firsts.append((row["output"], gold))
    if spec.extra_metrics and report.total:
        report = replace(report, **spec.extra_metrics(firsts))
    if output is not None:
        write_jsonl(output, scored)
    return report


def _check_line(location: str, row: Any) -> tuple[str, dict[str, Any]]:
    hint = 'each line is {"output": "...", "answer": "..."} or {"output": "...", "id": "..."}'
    if isinstance(row, Exception):
        raise MapdError(f"{location}: {row}", hint)
    if not isinstance(row, dict):
        raise MapdError(f"{location}: expected a JSON object", hint)
    if not isinstance(row.get("output"), str):
        raise MapdError(f'{location}: missing field "output" (the model\'s text)', hint)
    # mapd's own predictions.jsonl names them `gold` and `question_id`
    for name, alias in (("answer", "gold"), ("id", "question_id")):
        if name not in row and alias in row:
            row = {**row, name: row[alias]}
    if "answer" not in row and "id" not in row:
        raise MapdError(f'{location}: needs "answer" or "id"', hint)
    return location, row


def _gold(
    location: str, row: dict[str, Any], kind: AnswerType, golds: dict[str, Question] | None
) -> tuple[str, list[str] | None]:
    """(normalised gold answer, options) of one input line."""
    options = row.get("options") if isinstance(row.get("options"), list) else None
    if "answer" in row:
        try:
            return normalize_gold(row["answer"], kind, options), options
        except ValueError as exc:
            raise MapdError(f"{location}: {exc}", f"give a {kind} answer") from None
    question = (golds or {}).get(str(row["id"]))
    if question is None:
        raise MapdError(
            f"{location}: id {row['id']!r} is not a question of the task's data",
            "check --path / --config, or give the gold answer in an `answer` field",
        )
    return question.answer, options or question.options or None

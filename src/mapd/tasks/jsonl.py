"""A user's own questions: a JSON Lines file (or JSON list) with field names set in the config.

task:
  name: jsonl
  source: local
  path: data/my_questions.jsonl      # or a folder with train.jsonl and test.jsonl
  answer_type: number                # number, yesno, choice or text
  question_field: question
  answer_field: answer
  id_field: id                       # optional; else jsonl-<file>-<row>
  options_field: options             # choice: a list of option texts
"""

from __future__ import annotations

from typing import Any

from mapd.answers import normalize_gold
from mapd.config import TaskConfig
from mapd.records import Question
from mapd.tasks.spec import RowError, Task, require_fields


def parse_row(row: Any, default_id: str, cfg: TaskConfig) -> Question:
    answer_type = cfg.answer_type or "text"
    required = (cfg.question_field, cfg.answer_field)
    if cfg.options_field and answer_type == "choice":
        required += (cfg.options_field,)
    try:
        row = require_fields(row, required)
    except RowError as exc:
        settings = ("question_field", "answer_field", "options_field")
        absent = [
            f"task.{name}"
            for name in settings
            if isinstance(row, dict) and getattr(cfg, name) in set(required) - set(row)
        ]
        hint = f"name the row's fields with {' and '.join(absent)}" if absent else None
        raise RowError(str(exc), hint) from None
    options: list[str] = []
    if answer_type == "choice" and cfg.options_field:
        raw_options = row[cfg.options_field]
        if not isinstance(raw_options, list) or not raw_options:
            raise RowError(f'field "{cfg.options_field}" must be a list of option texts')
        options = [str(o).strip() for o in raw_options]
    try:
        answer = normalize_gold(row[cfg.answer_field], answer_type, options or None)
    except ValueError as exc:
        raise RowError(f'field "{cfg.answer_field}": {exc}') from None
    question_id = row.get(cfg.id_field) if cfg.id_field else None
    if cfg.id_field and question_id in (None, ""):
        raise RowError(f'missing field "{cfg.id_field}"')
    return Question(
        id=str(question_id) if question_id is not None else default_id,
        question=str(row[cfg.question_field]).strip(),
        answer=answer,
        answer_type=answer_type,
        options=options,
    )


TASK = Task(
    name="jsonl",
    answer_type=None,
    description="Your own JSON Lines file; field names and answer type from the config.",
    sources=("local",),
    parse_row=parse_row,
    split_files={"train": "train.jsonl", "test": "test.jsonl"},
)

"""LogiQA: four-option logical reasoning questions from Chinese civil-service exams (English).

Native text format (`Train.txt`, `Eval.txt`, `Test.txt` of the release): 8 lines per item:
a blank line, the correct letter (a-d), the context, the question, then the options
"A.xxx" to "D.xxx". Hub `lucasmccabe/logiqa` rows hold `context`, `query`, `options` (the
texts without letters) and `correct_option` (the option's index). Both become one
Question whose text is context + question and whose answer is a letter A-D.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mapd.answers import normalize_gold
from mapd.config import TaskConfig
from mapd.records import Question
from mapd.tasks.files import read_text
from mapd.tasks.spec import RowError, Task, require_fields

_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Da-d])\s*[.．、):]\s*")


def read_items(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, row) per item of a LogiQA text file; a malformed item yields a RowError."""
    lines = read_text(path).splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        start = i
        block = []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i].strip())
            i += 1
        yield f"{path} line {start + 1}", _item(block)


def _item(block: list[str]) -> dict[str, Any] | RowError:
    if len(block) != 7:
        return RowError(
            f"expected 7 lines (letter, context, question, options A-D), got {len(block)}"
        )
    letter, context, query, *options = block
    if letter.rstrip(".").lower() not in ("a", "b", "c", "d"):
        return RowError(f"expected the correct letter a-d, got {letter[:20]!r}")
    texts = []
    for expected, option in zip("ABCD", options, strict=True):
        m = _OPTION_PREFIX.match(option)
        if not m or m[1].upper() != expected:
            return RowError(f'expected option "{expected}.", got {option[:20]!r}')
        texts.append(option[m.end() :])
    return {"context": context, "query": query, "options": texts, "correct_option": letter}


def parse_row(row: Any, default_id: str, cfg: TaskConfig) -> Question:
    row = require_fields(row, ("context", "query", "options", "correct_option"))
    options = row["options"]
    if not isinstance(options, list) or len(options) < 2:
        raise RowError('field "options" must be a list of option texts')
    options = [_OPTION_PREFIX.sub("", str(o)).strip() for o in options]
    correct = row["correct_option"]
    try:
        answer = normalize_gold(
            int(correct) if str(correct).isdigit() else correct, "choice", options
        )
    except ValueError as exc:
        raise RowError(str(exc)) from None
    return Question(
        id=str(row.get("id") or default_id),
        question=f"{str(row['context']).strip()}\n{str(row['query']).strip()}",
        answer=answer,
        answer_type="choice",
        options=options,
    )


TASK = Task(
    name="logiqa",
    answer_type="choice",
    description="Four-option logical reasoning questions (LogiQA, English).",
    sources=("hub", "local"),
    parse_row=parse_row,
    hub_id="lucasmccabe/logiqa",
    split_files={"train": "Train.txt", "test": "Test.txt"},
    read_local=read_items,
)

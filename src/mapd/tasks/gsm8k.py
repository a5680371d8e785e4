"""GSM8K: grade-school maths word problems with a numeric answer after "####".

Native format (hub `openai/gsm8k`, config `main`, and the JSONL files of the release):
one object per line with `question` and `answer`, where `answer` is the worked solution
with `<<48/2=24>>` calculator annotations and a last line `#### 72`. The gold rationale is
the solution before "####" with the annotations removed.
"""

from __future__ import annotations

import re
from typing import Any

from mapd.answers import normalize_gold
from mapd.config import TaskConfig
from mapd.records import Question
from mapd.tasks.spec import RowError, Task, require_fields

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def split_solution(solution: str) -> tuple[str, str]:
    """(rationale without calculator annotations, raw final answer) of a GSM8K solution."""
    if "####" not in solution:
        raise RowError('field "answer" has no "#### <number>" final line')
    rationale, _, final = solution.rpartition("####")
    return _CALCULATOR.sub("", rationale).strip(), final.strip()


def parse_row(row: Any, default_id: str, cfg: TaskConfig) -> Question:
    row = require_fields(row, ("question", "answer"))
    rationale, final = split_solution(str(row["answer"]))
    try:
        answer = normalize_gold(final, "number")
    except ValueError as exc:
        raise RowError(str(exc)) from None
    return Question(
        id=str(row.get("id") or default_id),
        question=str(row["question"]).strip(),
        answer=answer,
        answer_type="number",
        gold_rationale=rationale or None,
    )


TASK = Task(
    name="gsm8k",
    answer_type="number",
    description="Grade-school maths word problems; numeric answer after ####.",
    sources=("hub", "local", "reasoning_gym"),
    parse_row=parse_row,
    hub_id="openai/gsm8k",
    hub_config="main",
    split_files={"train": "train.jsonl", "test": "test.jsonl"},
)

"""SVAMP: simple arithmetic word problems with small variations (numeric answers).

Native format (`SVAMP.json` of the release, and hub `ChilleD/SVAMP`): a list of objects
with `ID` ("chal-1"), `Body`, `Question`, `Equation`, `Answer` (a float) and `Type`. The
question shown is Body + " " + Question, exactly as the paper's release writes it (no period
is added where the body lacks one: the released training questions keep that form, and a
student must be trained and evaluated on the same text). The release is one file, so train
and test are split by id hash unless `task.files` names one file per split.
"""

from __future__ import annotations

from typing import Any

from mapd.answers import normalize_gold
from mapd.config import TaskConfig
from mapd.records import Question
from mapd.tasks.spec import RowError, Task, require_fields


def parse_row(row: Any, default_id: str, cfg: TaskConfig) -> Question:
    row = require_fields(row, ("Body", "Question", "Answer"))
    try:
        answer = normalize_gold(row["Answer"], "number")
    except ValueError as exc:
        raise RowError(str(exc)) from None
    body, question = str(row["Body"]).strip(), str(row["Question"]).strip()
    return Question(
        id=str(row.get("ID") or default_id),
        question=f"{body} {question}",
        answer=answer,
        answer_type="number",
    )


TASK = Task(
    name="svamp",
    answer_type="number",
    description="Simple arithmetic word problems with variations (SVAMP); numeric answer.",
    sources=("hub", "local", "reasoning_gym"),
    parse_row=parse_row,
    hub_id="ChilleD/SVAMP",
    single_files=("SVAMP.json",),
)

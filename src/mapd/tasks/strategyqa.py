"""StrategyQA: yes/no questions that need implicit multi-step reasoning.

Native format (the release's `train.json` / `strategyqa_train.json`, and hub
`ChilleD/StrategyQA`): a list of objects with `qid`, `question`, `answer` (a boolean),
`facts` (supporting sentences), `decomposition` and `evidence`. Only the training file
has answers, so train and test are split by qid hash. The facts, joined, serve as the
gold rationale.
"""

from __future__ import annotations

from typing import Any

from mapd.answers import normalize_gold
from mapd.config import TaskConfig
from mapd.records import Question
from mapd.tasks.spec import RowError, Task, require_fields


def parse_row(row: Any, default_id: str, cfg: TaskConfig) -> Question:
    row = require_fields(row, ("question", "answer"))
    try:
        answer = normalize_gold(row["answer"], "yesno")
    except ValueError as exc:
        raise RowError(str(exc)) from None
    facts = row.get("facts")
    if isinstance(facts, list):
        facts = " ".join(str(f).strip() for f in facts if str(f).strip())
    return Question(
        id=str(row.get("qid") or default_id),
        question=str(row["question"]).strip(),
        answer=answer,
        answer_type="yesno",
        gold_rationale=facts or None,
    )


TASK = Task(
    name="strategyqa",
    answer_type="yesno",
    description="Yes/no questions needing implicit multi-step reasoning (StrategyQA).",
    sources=("hub", "local"),
    parse_row=parse_row,
    hub_id="ChilleD/StrategyQA",
    single_files=("train.json", "strategyqa_train.json", "strategyQA_train.json"),
)

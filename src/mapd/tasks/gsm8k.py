"""GSM8K: grade-school maths word problems with a numeric answer after "####".

Native format (hub `openai/gsm8k`, config `main`, and the JSONL files of the release):
one object per line with `question` and `answer`, where `answer` is the worked solution
with `<<48/2=24>>` calculator annotations and a last line `#### 72`. The gold rationale is
the solution before "####" with the annotations removed.

Besides mapd's own grading, GSM8K is scored the way lm-evaluation-harness scores it
(`lm_eval_metrics`: its strict-match and flexible-extract filters, reproduced exactly), so
accuracy can be compared with figures reported by that tool.
"""

from __future__ import annotations

import re
from typing import Any

from mapd.answers import normalize_gold
from mapd.config import TaskConfig
from mapd.records import Question
from mapd.tasks.spec import RowError, Task, require_fields

_CALCULATOR = re.compile(r"<<[^<>]*>>")


# From lm_eval/tasks/gsm8k/gsm8k.yaml (version 3): the two filters and the exact_match
# settings (ignore_case: true, ignore_punctuation: false, these regexes_to_ignore).
LM_EVAL_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
LM_EVAL_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
LM_EVAL_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")


def _lm_eval_regex(pattern: re.Pattern[str], text: str, group_select: int) -> str | None:
    matches = pattern.findall(text)
    if not matches:
        return None  # lm-eval's fallback "[invalid]", which never matches a gold answer
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next(m for m in match if m)
    return match.strip()


def lm_eval_strict(text: str) -> str | None:
    """lm-eval gsm8k `strict-match`: the first "#### <number>"."""
    return _lm_eval_regex(LM_EVAL_STRICT, text, 0)


def lm_eval_flexible(text: str) -> str | None:
    """lm-eval gsm8k `flexible-extract`: the last number-like run of characters."""
    return _lm_eval_regex(LM_EVAL_FLEXIBLE, text, -1)


def _lm_eval_clean(text: str) -> str:
    for pattern in LM_EVAL_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def lm_eval_correct(extracted: str | None, gold: str) -> bool:
    """lm-eval's exact_match after its ignore settings; `gold` is a GSM8K answer text or number."""
    return extracted is not None and _lm_eval_clean(extracted) == _lm_eval_clean(gold)


def lm_eval_metrics(scored: list[tuple[str, str]]) -> dict[str, float]:
    """lm-eval's two accuracies over (output, gold answer) pairs."""
    n = len(scored) or 1
    return {
        "lm_eval_strict": sum(lm_eval_correct(lm_eval_strict(o), g) for o, g in scored) / n,
        "lm_eval_flexible": sum(lm_eval_correct(lm_eval_flexible(o), g) for o, g in scored) / n,
    }


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
    extra_metrics=lm_eval_metrics,
)

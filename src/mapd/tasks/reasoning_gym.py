"""Questions generated offline by reasoning-gym: `gsm_symbolic` (GSM8K-style), `basic_arithmetic`...

    questions = generate_questions("gsm_symbolic", size=100, seed=1)

The item's `answer` is the gold answer and `metadata.answer_cot`, when present, the gold
rationale (without its "#### N" line). Each split has its own seed (`task.seeds`), so
train and test are different questions. Ids are `<generator>-<seed>-<index>`.
"""

from __future__ import annotations

import re

from mapd.answers import normalize_gold, parse_number
from mapd.errors import MapdError
from mapd.records import AnswerType, Question

NUMERIC_GENERATORS = ("gsm_symbolic", "basic_arithmetic")
_FINAL_LINE = re.compile(r"\n?####[^\n]*\s*$")


def generate_questions(generator: str, size: int, seed: int) -> list[Question]:
    import reasoning_gym

    try:
        items = list(reasoning_gym.create_dataset(generator, size=size, seed=seed))
    except (KeyError, ValueError) as exc:
        raise MapdError(
            f"reasoning-gym cannot create dataset {generator!r}: {exc}",
            "set task.generator to a reasoning-gym dataset, e.g. gsm_symbolic or basic_arithmetic",
        ) from None
    return [_question(generator, seed, i, item) for i, item in enumerate(items)]


def _question(generator: str, seed: int, index: int, item: dict) -> Question:
    raw = str(item["answer"])
    numeric = generator in NUMERIC_GENERATORS or parse_number(raw) is not None
    answer_type: AnswerType = "number" if numeric else "text"
    cot = (item.get("metadata") or {}).get("answer_cot")
    return Question(
        id=f"{generator}-{seed}-{index:05d}",
        question=str(item["question"]).strip(),
        answer=normalize_gold(raw, answer_type),
        answer_type=answer_type,
        gold_rationale=_FINAL_LINE.sub("", cot).strip() if cot else None,
        source=f"reasoning_gym:{generator}",
    )

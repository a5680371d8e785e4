"""The records that flow between stages; each is one JSON line with a stable id.

Joins between stages are by id (question id, teacher, reviewer), never by position.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

AnswerType = Literal["number", "yesno", "choice", "text"]


class Record(BaseModel):
    """Base for JSON-line records: unknown fields are an error, so a renamed field is caught."""

    model_config = ConfigDict(extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json()


class Question(Record):
    """One exam question, whatever dataset it came from.

    `answer` is the gold answer already normalised for its type: a canonical number
    string ("72", "0.5", "-3"), "yes"/"no", an option letter ("A".."D"), or free text.
    """

    id: str
    question: str
    answer: str
    answer_type: AnswerType
    options: list[str] = []
    gold_rationale: str | None = None
    source: str = ""


class Example(Record):
    """One training example of `dataset/train.jsonl`.

    The prompt is `instruction` followed by a blank line and `input` (as the user turn of
    the student's chat template, or in the paper's plain instruction/input/response
    format); `output` is the target. `kind` says which term of the two-task loss it feeds.
    """

    id: str
    kind: Literal["feedback", "rationale"]
    question_id: str
    teacher: str
    instruction: str
    input: str
    output: str

    def prompt_text(self) -> str:
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction

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


class Attempt(Record):
    """The student's answer to one exam question."""

    question_id: str
    output: str
    extracted: str | None
    correct: bool


class Mistake(Record):
    """A question the student got wrong, with everything the teachers need to see."""

    question_id: str
    question: str
    answer: str
    answer_type: AnswerType
    options: list[str] = []
    student_output: str
    student_answer: str | None


CUT_OFF = "length"  # the finish reason of a reply stopped at the token limit


class Feedback(Record):
    """One teacher's explanation of one mistake. Feedback is not peer-reviewed.

    `finish_reason` is why the teacher's reply ended ("length": cut off at max_tokens, so
    it is not trained); `reasoning` the thinking a reasoning model sent beside the text,
    kept for reading and never trained."""

    id: str
    question_id: str
    teacher: str
    text: str
    finish_reason: str | None = None
    reasoning: str | None = None

    @property
    def cut_off(self) -> bool:
        return self.finish_reason == CUT_OFF


class Rationale(Record):
    """One teacher's own step-by-step solution of a mistake's question (no hint given).

    `extracted` and `correct` are the answer check: the rationale's own final answer
    against the gold answer. `finish_reason` and `reasoning` as in Feedback: a rationale
    cut off at max_tokens is rejected.
    """

    id: str
    question_id: str
    teacher: str
    text: str
    extracted: str | None
    correct: bool
    finish_reason: str | None = None
    reasoning: str | None = None

    @property
    def cut_off(self) -> bool:
        return self.finish_reason == CUT_OFF


class Review(Record):
    """One reviewer's score of one rationale; `score` is None when the reply had no valid score
    (or was cut off at max_tokens before a bracketed score)."""

    id: str
    rationale_id: str
    question_id: str
    author: str
    reviewer: str
    score: float | None
    raw: str
    finish_reason: str | None = None
    reasoning: str | None = None


class Decision(Record):
    """Whether a rationale is kept for training, and why."""

    rationale_id: str
    question_id: str
    teacher: str
    accepted: bool
    reason: Literal[
        "accepted",
        "unreviewed",
        "low_score",
        "no_valid_review",
        "wrong_answer",
        "cut_off",
        "not_asked",
    ]
    scores: dict[str, float] = {}
    aggregate: float | None = None
    answer_correct: bool


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

"""What a task is (`Task`), one loaded split (`LoadedSplit`) and a malformed row (`RowError`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapd.config import TaskConfig
from mapd.records import AnswerType, Question

Source = str  # "hub", "local" or "reasoning_gym", as in TaskConfig.source


class RowError(ValueError):
    """One malformed row; the loader adds its file and line and applies `task.on_bad_row`.
    `hint`: how to fix the config when every row would fail the same way."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# parse_row(row, default_id, cfg) -> Question; raises RowError for a malformed row.
RowParser = Callable[[Any, str, TaskConfig], Question]
# read_local(path) -> (location, row) pairs, e.g. ("data/train.jsonl line 7", {...}).
LocalReader = Callable[[Path], Iterator[tuple[str, Any]]]


@dataclass(frozen=True)
class Task:
    """One dataset: where it comes from, what its answers look like, how to read its rows."""

    name: str
    answer_type: AnswerType | None  # None: set per config (the jsonl task)
    description: str
    sources: tuple[Source, ...]
    parse_row: RowParser
    hub_id: str | None = None
    hub_config: str | None = None
    split_files: dict[str, str] = field(default_factory=dict)
    single_files: tuple[str, ...] = ()  # names of one file holding every split (split by id hash)
    read_local: LocalReader | None = None  # None: JSON or JSON Lines by file extension
    # extra_metrics([(output, gold answer), ...]) -> {name: fraction}, beside mapd's accuracy
    extra_metrics: Callable[[list[tuple[str, str]]], dict[str, float]] | None = None


@dataclass
class LoadedSplit:
    """The questions of one split, and how many malformed rows were skipped (on_bad_row: skip)."""

    questions: list[Question]
    skipped: int = 0


def require_fields(row: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The row as a dict holding all `names`, else RowError naming the first missing field."""
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}")
    for name in names:
        if name not in row:
            has = ", ".join(list(row)[:8]) or "no fields"
            raise RowError(f'missing field "{name}" (the row has {has})')
        if row[name] is None or row[name] == "":
            raise RowError(f'missing field "{name}"')
    return row

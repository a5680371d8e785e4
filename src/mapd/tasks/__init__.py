"""The task registry and the one way to load questions: `load_questions(cfg, split, seed)`.

    from mapd.tasks import get_task, load_questions
    loaded = load_questions(cfg.task, "train", seed=731)
    loaded.questions[0].id   # "gsm8k-train-00000"; loaded.skipped counts rows skipped

Sources: `hub` (datasets.load_dataset, online), `local` (a file or folder in the dataset's
native format), `reasoning_gym` (generated offline). Splits are "train" and "test".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from mapd.config import TaskConfig
from mapd.errors import MapdError
from mapd.records import Question
from mapd.tasks import gsm8k, jsonl, logiqa, strategyqa, svamp
from mapd.tasks.files import read_json_rows
from mapd.tasks.hub import read_hub_rows
from mapd.tasks.reasoning_gym import generate_questions
from mapd.tasks.spec import LoadedSplit, RowError, Task
from mapd.tasks.splits import split_by_hash, take_limit

__all__ = ["TASKS", "LoadedSplit", "Task", "get_task", "load_questions"]

TASKS: dict[str, Task] = {
    t.name: t for t in (gsm8k.TASK, svamp.TASK, strategyqa.TASK, logiqa.TASK, jsonl.TASK)
}
SPLITS = ("train", "test")
FIRST_ROWS = 5  # rows of each local file that `mapd validate` parses


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise MapdError(f"unknown task {name!r}", f"choose one of: {', '.join(TASKS)}") from None


def check_task(cfg: TaskConfig) -> None:
    """What `mapd validate` can tell of the task section without loading it: the source is
    one the task has, a generator is one reasoning-gym has, and a local dataset's first rows
    parse (a file of another format or a wrong field name is found now, not at the exam)."""
    _check_source(cfg)
    if cfg.source == "local":
        _check_first_rows(get_task(cfg.name), cfg)


def _check_source(cfg: TaskConfig) -> None:
    task = get_task(cfg.name)
    if cfg.source not in task.sources:
        raise MapdError(
            f"task {task.name} cannot use source {cfg.source!r}",
            f"set task.source to one of: {', '.join(task.sources)}",
        )
    if cfg.source == "local" and not Path(cfg.path or "").exists():
        raise MapdError(f"task.path {cfg.path}: no such file or folder", "check task.path")
    if cfg.source == "reasoning_gym":
        from reasoning_gym.factory import DATASETS

        if cfg.generator not in DATASETS:
            close = difflib.get_close_matches(cfg.generator, DATASETS, n=1)
            raise MapdError(
                f"task.generator {cfg.generator!r} is not a reasoning-gym dataset",
                f"did you mean {close[0]}?" if close else "e.g. gsm_symbolic or basic_arithmetic",
            )


def load_questions(cfg: TaskConfig, split: str, seed: int) -> LoadedSplit:
    """The questions of one split ("train" or "test") from the configured source, limit applied."""
    if split not in SPLITS:
        raise MapdError(f"unknown split {split!r}", "use train or test")
    _check_source(cfg)
    task = get_task(cfg.name)
    if cfg.source == "reasoning_gym":
        questions = generate_questions(cfg.generator, cfg.sizes[split], cfg.seeds[split])
        return LoadedSplit(take_limit(questions, cfg.limit, seed))
    if cfg.source == "hub":
        hub_id = cfg.hub_id or task.hub_id or ""
        rows = read_hub_rows(
            hub_id, task.hub_config if not cfg.hub_id else None, split, _offline_hint(task)
        )
        loaded = _parse_rows(task, cfg, rows, f"{task.name}-{split}", f"hub:{hub_id}")
    else:
        path, single = _local_file(task, cfg, split)
        reader = task.read_local or read_json_rows
        stem = path.stem.lower()
        loaded = _parse_rows(task, cfg, reader(path), f"{task.name}-{stem}", f"local:{path.name}")
        if single:
            rows = len(loaded.questions)
            loaded.questions = split_by_hash(loaded.questions, split, seed, cfg.test_fraction)
            if not loaded.questions:
                raise MapdError(
                    f"{path.name}: its {split} split is empty ({rows} questions, "
                    f"task.test_fraction {cfg.test_fraction})",
                    "add questions (a few dozen at least), or change task.test_fraction",
                )
    _check_unique_ids(loaded.questions)
    loaded.questions = take_limit(loaded.questions, cfg.limit, seed)
    return loaded


def _offline_hint(task: Task) -> str:
    hint = "download the dataset files and set task.source=local with task.path"
    if "reasoning_gym" in task.sources:
        hint += ", or use task.source=reasoning_gym to generate questions offline"
    return hint


def _local_file(task: Task, cfg: TaskConfig, split: str) -> tuple[Path, bool]:
    """The file to read for `split`, and whether it holds every split (then split by id hash)."""
    path = Path(cfg.path or "")
    if not path.exists():
        raise MapdError(f"{path}: no such file or folder", "check task.path")
    if path.is_file():
        return path, True
    if split in cfg.files:
        # the same file named for both splits holds both: divide it by hash, never reuse it whole
        return path / cfg.files[split], len(set(cfg.files.values())) < len(cfg.files)
    if (path / task.split_files.get(split, "\0")).is_file():
        return path / task.split_files[split], False
    for name in task.single_files:
        if (path / name).is_file():
            return path / name, True
    expected = [task.split_files[s] for s in SPLITS if s in task.split_files] + list(
        task.single_files
    )
    raise MapdError(
        f"{path}: found no {split} file (looked for {', '.join(expected) or 'task.files'})",
        f"name the file with task.files.{split}=FILE, or point task.path at the file itself",
    )


def _check_first_rows(task: Task, cfg: TaskConfig) -> None:
    """The first rows of each local file parse with the task's own parser; the first bad one
    is reported (with on_bad_row: skip, only when none of them parses)."""
    for path in sorted({_local_file(task, cfg, split)[0] for split in SPLITS}):
        rows = islice((task.read_local or read_json_rows)(path), FIRST_ROWS)
        bad, parsed = [], 0
        for index, (location, row) in enumerate(rows):
            try:
                _parse_row(task, cfg, row, f"{task.name}-{path.stem.lower()}-{index:05d}")
                parsed += 1
            except RowError as exc:
                bad.append((location, exc))
        if bad and (cfg.on_bad_row != "skip" or not parsed):
            none = f"is {path.name} a {task.name} dataset? its first rows do not parse"
            raise _bad_row(*bad[0], None if parsed else none)


def _parse_row(task: Task, cfg: TaskConfig, row: Any, default_id: str) -> Question:
    if isinstance(row, Exception):  # a line the reader could not parse
        raise RowError(str(row))
    return task.parse_row(row, default_id, cfg)


def _bad_row(location: str, exc: RowError, hint: str | None = None) -> MapdError:
    return MapdError(
        f"{location}: {exc}",
        exc.hint or hint or "fix the row, or set task.on_bad_row=skip to skip malformed rows",
    )


def _parse_rows(
    task: Task, cfg: TaskConfig, rows: Iterator[tuple[str, Any]], id_prefix: str, source: str
) -> LoadedSplit:
    questions, skipped = [], 0
    for index, (location, row) in enumerate(rows):
        try:
            question = _parse_row(task, cfg, row, f"{id_prefix}-{index:05d}")
        except RowError as exc:
            if cfg.on_bad_row == "skip":
                skipped += 1
                continue
            raise _bad_row(location, exc) from None
        questions.append(question.model_copy(update={"source": source}))
    if not questions:
        raise MapdError(f"{source}: no usable rows ({skipped} skipped)", "check the file's format")
    return LoadedSplit(questions, skipped)


def _check_unique_ids(questions: list[Question]) -> None:
    seen: set[str] = set()
    for q in questions:
        if q.id in seen:
            raise MapdError(
                f"duplicate question id {q.id!r}", "ids must be unique within a dataset"
            )
        seen.add(q.id)

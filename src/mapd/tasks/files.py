"""Reading a dataset's native files with errors that name the file and line and say how to fix them.

for location, row in read_jsonl_rows(Path("data/train.jsonl")):  # ("data/train.jsonl line 1", {...})
    ...

These keep every row of a user's file with its location, a malformed one as an error to
report; `mapd.rundir.read_jsonl` reads the validated records a stage wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mapd.errors import MapdError


def read_text(path: Path) -> str:
    """The whole file as UTF-8 text; MapdError when it is missing, empty or not UTF-8."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MapdError(f"{path}: file not found", "check task.path and task.files") from None
    except IsADirectoryError:
        raise MapdError(f"{path} is a folder, expected a file", "check task.files") from None
    except OSError as exc:
        raise MapdError(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MapdError(
            f"{path} line {line}: not UTF-8 text (byte offset {exc.start})",
            "re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`",
        ) from None
    if not text.strip():
        raise MapdError(f"{path} is empty", "point task.path at the dataset file with rows in it")
    return text


def read_jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, row) per non-blank line; a line that is not JSON yields a ValueError row."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            row = ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})")
        yield f"{path} line {number}", row


def read_json_list(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, item) for a file holding one JSON list of objects."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MapdError(
            f"{path} line {exc.lineno}: invalid JSON ({exc.msg})",
            "fix the file, or give a JSON Lines file (.jsonl) with one object per line",
        ) from None
    if not isinstance(data, list):
        raise MapdError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for number, item in enumerate(data, start=1):
        yield f"{path} item {number}", item


def read_json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """JSON Lines for .jsonl files, a JSON list otherwise (sniffed from the first character)."""
    if path.suffix == ".jsonl":
        return read_jsonl_rows(path)
    first = read_text(path).lstrip()[:1]
    return read_json_list(path) if first == "[" else read_jsonl_rows(path)

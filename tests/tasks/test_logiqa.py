"""LogiQA loading from its 8-lines-per-item text files, and from hub-shaped rows."""

from __future__ import annotations

import pytest

from mapd.errors import MapdError
from mapd.prompts import with_options
from mapd.tasks import load_questions
from mapd.tasks.logiqa import parse_row


def test_loads_text_files(fixtures, local_cfg) -> None:
    cfg = local_cfg("logiqa", fixtures / "logiqa")
    train = load_questions(cfg, "train", seed=731).questions
    test = load_questions(cfg, "test", seed=731).questions
    assert [q.answer for q in train] == ["C", "A", "D"]
    assert [q.answer for q in test] == ["B", "A"]
    first = train[0]
    assert first.id == "logiqa-train-00000"
    assert first.options[2] == "Pip can fly."
    assert first.question.endswith("Which of the following must be true?")
    assert with_options(first.question, first.options).splitlines()[-2:] == [
        "(C) Pip can fly.",
        "(D) No bird can fly.",
    ]


def test_hub_row_with_index(local_cfg, fixtures) -> None:
    cfg = local_cfg("logiqa", fixtures / "logiqa")
    row = {"context": "c", "query": "q?", "options": ["w", "x", "y", "z"], "correct_option": 3}
    assert parse_row(row, "logiqa-test-00000", cfg).answer == "D"
    row["correct_option"] = "1"
    assert parse_row(row, "logiqa-test-00000", cfg).answer == "B"


def test_malformed_item_names_line(tmp_path, local_cfg) -> None:
    text = "\nc\ncontext\nquestion?\nA.one\nB.two\nC.three\nD.four\n\nz\ncontext\nq?\nA.1\nB.2\nC.3\nD.4\n"
    (tmp_path / "Train.txt").write_text(text, encoding="utf-8")
    with pytest.raises(MapdError, match=r"Train.txt line 10: expected the correct letter"):
        load_questions(local_cfg("logiqa", tmp_path), "train", seed=1)
    loaded = load_questions(local_cfg("logiqa", tmp_path, on_bad_row="skip"), "train", seed=1)
    assert loaded.skipped == 1 and [q.answer for q in loaded.questions] == ["C"]


def test_missing_option_line(tmp_path, local_cfg) -> None:
    (tmp_path / "Train.txt").write_text("\na\nctx\nq?\nA.1\nB.2\nC.3\n", encoding="utf-8")
    with pytest.raises(MapdError, match="line 2: expected 7 lines"):
        load_questions(local_cfg("logiqa", tmp_path), "train", seed=1)

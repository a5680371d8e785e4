"""The generic jsonl task: field names and answer type from the config."""

from __future__ import annotations

import pytest

from mapd.config import TaskConfig
from mapd.errors import MapdError
from mapd.tasks import load_questions


def _cfg(path, **kwargs) -> TaskConfig:
    fields = dict(question_field="prompt", answer_field="gold", id_field="uid")
    return TaskConfig(name="jsonl", source="local", path=str(path), **(fields | kwargs))


def test_choice_questions_with_options(fixtures) -> None:
    cfg = _cfg(
        fixtures / "jsonl" / "questions.jsonl",
        answer_type="choice",
        options_field="choices",
        test_fraction=0.01,
    )
    questions = load_questions(cfg, "train", seed=5).questions
    assert [(q.id, q.answer) for q in questions] == [("q1", "B"), ("q2", "A"), ("q3", "C")]
    assert questions[0].options == ["Mars", "Jupiter", "Venus"]


def test_missing_id_field(fixtures) -> None:
    cfg = _cfg(fixtures / "jsonl" / "questions.jsonl", answer_type="text", id_field="nope")
    with pytest.raises(MapdError, match='questions.jsonl line 1: missing field "nope"'):
        load_questions(cfg, "train", seed=5)


def test_default_ids_from_file_name(tmp_path) -> None:
    (tmp_path / "mine.jsonl").write_text('{"prompt": "2+2?", "gold": 4}\n', encoding="utf-8")
    cfg = _cfg(tmp_path / "mine.jsonl", answer_type="number", id_field=None, test_fraction=0.01)
    (question,) = load_questions(cfg, "train", seed=1).questions
    assert question.id == "jsonl-mine-00000" and question.answer == "4"


def test_fields_named_otherwise_are_listed_with_the_settings_to_name_them(tmp_path) -> None:
    (tmp_path / "mine.jsonl").write_text('{"problem": "2+2?", "solution": 4}\n' * 40)
    path = str(tmp_path / "mine.jsonl")
    cfg = TaskConfig(name="jsonl", source="local", path=path, answer_type="number")
    with pytest.raises(MapdError) as err:
        load_questions(cfg, "train", seed=1)
    assert err.value.message.endswith(
        'mine.jsonl line 1: missing field "question" (the row has problem, solution)'
    )
    assert err.value.hint == "name the row's fields with task.question_field and task.answer_field"


def test_a_file_too_small_to_split_says_so(tmp_path) -> None:
    from mapd.tasks.splits import id_fraction

    (tmp_path / "one.jsonl").write_text('{"prompt": "2+2?", "gold": 4}\n')
    cfg = _cfg(tmp_path / "one.jsonl", answer_type="number", id_field=None)
    in_test = id_fraction(731, "jsonl-one-00000", "split") < cfg.test_fraction
    empty = "train" if in_test else "test"
    assert load_questions(cfg, "test" if in_test else "train", seed=731).questions
    with pytest.raises(MapdError, match=f"one.jsonl: its {empty} split is empty \\(1 questions"):
        load_questions(cfg, empty, seed=731)

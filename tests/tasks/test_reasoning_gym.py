"""Questions generated offline by reasoning-gym: gsm_symbolic, seeds per split, limits."""

from __future__ import annotations

import pytest

from mapd.answers import answers_match, extract_answer
from mapd.config import TaskConfig
from mapd.errors import MapdError
from mapd.tasks import load_questions


def _cfg(**kwargs) -> TaskConfig:
    return TaskConfig(name="gsm8k", source="reasoning_gym", sizes={"train": 6, "test": 4}, **kwargs)


def test_gsm_symbolic_offline() -> None:
    train = load_questions(_cfg(), "train", seed=731).questions
    test = load_questions(_cfg(), "test", seed=731).questions
    assert len(train) == 6 and len(test) == 4
    assert train[0].id == "gsm_symbolic-1-00000" and test[0].id == "gsm_symbolic-2-00000"
    assert {q.question for q in train}.isdisjoint({q.question for q in test})
    for q in train:
        assert q.answer_type == "number"
        assert q.gold_rationale and "####" not in q.gold_rationale
        # the generator's own rationale, scored by our extractor, is right
        assert answers_match(extract_answer(q.gold_rationale, "number"), q.answer, "number")


def test_same_seed_same_questions_and_limit() -> None:
    a = load_questions(_cfg(limit=3), "train", seed=7).questions
    b = load_questions(_cfg(limit=3), "train", seed=7).questions
    assert [q.model_dump() for q in a] == [q.model_dump() for q in b] and len(a) == 3
    assert [q.id for q in a] == sorted(q.id for q in a)


def test_basic_arithmetic_is_numeric() -> None:
    questions = load_questions(_cfg(generator="basic_arithmetic"), "test", seed=1).questions
    assert all(q.answer_type == "number" for q in questions)


def test_unknown_generator() -> None:
    with pytest.raises(MapdError, match="'no_such_thing' is not a reasoning-gym dataset"):
        load_questions(_cfg(generator="no_such_thing"), "train", seed=1)
    with pytest.raises(MapdError) as near:
        load_questions(_cfg(generator="gsm_symbolc"), "train", seed=1)
    assert near.value.hint == "did you mean gsm_symbolic?"


def test_source_not_supported_by_task() -> None:
    cfg = TaskConfig(name="strategyqa", source="reasoning_gym")
    with pytest.raises(MapdError, match="cannot use source"):
        load_questions(cfg, "train", seed=1)

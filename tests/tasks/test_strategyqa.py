"""StrategyQA loading from the release's train.json: boolean answers become yes/no."""

from __future__ import annotations

import json

import pytest

from mapd.errors import MapdError
from mapd.tasks import load_questions


def test_loads_yes_no_with_qids_and_facts(fixtures, local_cfg) -> None:
    cfg = local_cfg("strategyqa", fixtures / "strategyqa")
    questions = [
        q for split in ("train", "test") for q in load_questions(cfg, split, seed=731).questions
    ]
    assert len(questions) == 10
    by_id = {q.id: q for q in questions}
    first = by_id[f"{0:020x}"]
    assert first.answer == "yes" and first.answer_type == "yesno"
    assert by_id[f"{1:020x}"].answer == "no"
    assert first.gold_rationale == "Thing 0 is 0. Even numbers are divisible by two."


def test_answer_must_be_boolean(tmp_path, local_cfg) -> None:
    rows = [{"qid": "a", "question": "Is it?", "answer": "perhaps"}]
    (tmp_path / "train.json").write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(MapdError, match="train.json item 1: gold answer 'perhaps'"):
        load_questions(local_cfg("strategyqa", tmp_path), "train", seed=1)

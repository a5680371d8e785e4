"""SVAMP loading from the release's single SVAMP.json: ids, numeric answers, hash split."""

from __future__ import annotations

import json

import pytest

from mapd.errors import MapdError
from mapd.tasks import load_questions


def test_loads_and_splits_single_file(fixtures, local_cfg) -> None:
    cfg = local_cfg("svamp", fixtures / "svamp", test_fraction=0.3)
    train = load_questions(cfg, "train", seed=731).questions
    test = load_questions(cfg, "test", seed=731).questions
    assert len(train) + len(test) == 12
    assert train and test and not {q.id for q in train} & {q.id for q in test}
    by_id = {q.id: q for q in train + test}
    assert by_id["chal-1"].answer == "10"  # 10.0 in the file
    assert by_id["chal-3"].answer == "2.5"
    assert by_id["chal-1"].question == (
        "Each pack of pens costs 11 dollars. If there is a discount of 1 dollars on each pack "
        "How much do you have to pay to buy each pack?"
    )


def test_question_text_is_the_release_text(fixtures, local_cfg, tmp_path) -> None:
    """import-release trains on the release's question text; the loader must evaluate on the same."""
    problems = json.loads((fixtures / "svamp" / "SVAMP.json").read_text(encoding="utf-8"))
    release_form = {f"{p['Body'].strip()} {p['Question'].strip()}" for p in problems}
    cfg = local_cfg("svamp", fixtures / "svamp", test_fraction=0.3)
    loaded = [
        q.question
        for split in ("train", "test")
        for q in load_questions(cfg, split, seed=731).questions
    ]
    assert set(loaded) == release_form


def test_split_depends_on_seed_not_position(fixtures, local_cfg) -> None:
    cfg = local_cfg("svamp", fixtures / "svamp" / "SVAMP.json")
    a = [q.id for q in load_questions(cfg, "test", seed=1).questions]
    b = [q.id for q in load_questions(cfg, "test", seed=1).questions]
    assert a == b


def test_invalid_json_file(tmp_path, local_cfg) -> None:
    (tmp_path / "SVAMP.json").write_text('[\n {"ID": "chal-1",\n', encoding="utf-8")
    with pytest.raises(MapdError, match=r"SVAMP.json line \d+: invalid JSON"):
        load_questions(local_cfg("svamp", tmp_path), "train", seed=1)


def test_bad_answer_names_item(tmp_path, local_cfg) -> None:
    items = [{"ID": "chal-1", "Body": "b", "Question": "q?", "Answer": "many"}]
    (tmp_path / "SVAMP.json").write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(MapdError, match="SVAMP.json item 1: gold answer 'many' is not a number"):
        load_questions(local_cfg("svamp", tmp_path), "train", seed=1)

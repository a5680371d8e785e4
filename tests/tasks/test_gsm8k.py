"""GSM8K loading from native JSONL files: answers, rationales, ids, limits and malformed rows."""

from __future__ import annotations

import pytest

from mapd.config import TaskConfig
from mapd.errors import MapdError
from mapd.tasks import load_questions


def test_loads_folder_with_train_and_test(fixtures, local_cfg) -> None:
    cfg = local_cfg("gsm8k", fixtures / "gsm8k")
    train = load_questions(cfg, "train", seed=731)
    test = load_questions(cfg, "test", seed=731)
    assert [q.id for q in train.questions][:2] == ["gsm8k-train-00000", "gsm8k-train-00001"]
    assert [q.answer for q in train.questions] == ["12", "14", "2400", "-3", "4.5"]
    assert [q.answer for q in test.questions] == ["12", "180", "5"]
    first = train.questions[0]
    assert first.answer_type == "number"
    assert first.gold_rationale == "Tom has 3*4=12 apples."  # calculator annotation removed
    assert "####" not in train.questions[1].gold_rationale
    assert first.source == "local:train.jsonl"
    assert train.skipped == 0


def test_single_file_is_split_by_id_hash(fixtures, local_cfg) -> None:
    cfg = local_cfg("gsm8k", fixtures / "gsm8k" / "train.jsonl", test_fraction=0.5)
    train = load_questions(cfg, "train", seed=3).questions
    test = load_questions(cfg, "test", seed=3).questions
    assert {q.id for q in train} | {q.id for q in test} == {
        f"gsm8k-train-{i:05d}" for i in range(5)
    }
    assert not {q.id for q in train} & {q.id for q in test}
    assert [q.id for q in load_questions(cfg, "test", seed=3).questions] == [q.id for q in test]


def test_limit_is_seeded_and_keeps_order(fixtures, local_cfg) -> None:
    cfg = local_cfg("gsm8k", fixtures / "gsm8k", limit=3)
    ids = [q.id for q in load_questions(cfg, "train", seed=1).questions]
    again = [q.id for q in load_questions(cfg, "train", seed=1).questions]
    assert ids == again and len(ids) == 3 and ids == sorted(ids)
    subsets = {
        tuple(q.id for q in load_questions(cfg, "train", seed=s).questions) for s in range(8)
    }
    assert len(subsets) > 1  # another seed picks another subset


def test_malformed_row_names_file_and_line(fixtures, local_cfg) -> None:
    cfg = local_cfg("gsm8k", fixtures / "gsm8k_bad", files={"train": "train.jsonl"})
    with pytest.raises(MapdError) as err:
        load_questions(cfg, "train", seed=1)
    assert err.value.message.endswith(
        'train.jsonl line 2: missing field "answer" (the row has question)'
    )
    assert "on_bad_row=skip" in (err.value.hint or "")


def test_skip_counts_bad_rows(fixtures, local_cfg) -> None:
    cfg = local_cfg("gsm8k", fixtures / "gsm8k_bad" / "train.jsonl", on_bad_row="skip")
    cfg = cfg.model_copy(update={"test_fraction": 0.01})
    loaded = load_questions(cfg, "train", seed=1)
    # 6 lines: 2 good, 1 missing answer, 1 blank, 1 invalid JSON, 1 without "####"
    assert loaded.skipped == 3
    assert [q.answer for q in loaded.questions] == ["12", "14"]


def test_invalid_json_line_is_reported(fixtures, local_cfg, tmp_path) -> None:
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{oops\n', encoding="utf-8")
    with pytest.raises(MapdError, match=r"train.jsonl line 2: invalid JSON"):
        load_questions(local_cfg("gsm8k", tmp_path), "train", seed=1)


def test_not_utf8_file(tmp_path, local_cfg) -> None:
    (tmp_path / "train.jsonl").write_bytes(b'{"question": "caf\xe9", "answer": "#### 1"}\n')
    with pytest.raises(MapdError, match="not UTF-8") as err:
        load_questions(local_cfg("gsm8k", tmp_path), "train", seed=1)
    assert "UTF-8" in (err.value.hint or "")


def test_empty_file(tmp_path, local_cfg) -> None:
    (tmp_path / "train.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(MapdError, match="is empty"):
        load_questions(local_cfg("gsm8k", tmp_path), "train", seed=1)


def test_missing_file_and_folder(tmp_path, local_cfg) -> None:
    with pytest.raises(MapdError, match="found no test file"):
        load_questions(local_cfg("gsm8k", tmp_path), "test", seed=1)
    with pytest.raises(MapdError, match="no such file or folder"):
        load_questions(local_cfg("gsm8k", tmp_path / "nope"), "test", seed=1)


def test_hub_offline_says_what_to_do() -> None:
    # conftest sets HF_DATASETS_OFFLINE=1, so the hub is unreachable here
    with pytest.raises(MapdError, match="hub") as err:
        load_questions(TaskConfig(name="gsm8k", source="hub"), "test", seed=1)
    assert "source=local" in (err.value.hint or "")
    assert "reasoning_gym" in (err.value.hint or "")


def test_unknown_split(fixtures, local_cfg) -> None:
    with pytest.raises(MapdError, match="unknown split"):
        load_questions(local_cfg("gsm8k", fixtures / "gsm8k"), "dev", seed=1)


def test_same_file_for_both_splits_is_divided(fixtures, local_cfg) -> None:
    files = {"train": "train.jsonl", "test": "train.jsonl"}
    cfg = local_cfg("gsm8k", fixtures / "gsm8k", files=files, test_fraction=0.5)
    train = {q.id for q in load_questions(cfg, "train", seed=3).questions}
    test = {q.id for q in load_questions(cfg, "test", seed=3).questions}
    assert len(train | test) == 5 and not train & test


def test_gsm8k_owns_its_lm_eval_scores() -> None:
    from mapd.tasks import get_task

    scored = [("So 72.\n#### 72", "72"), ("It is $18.00.", "18"), ("The answer is 6", "6")]
    extra = get_task("gsm8k").extra_metrics
    assert extra is not None
    assert extra(scored) == {"lm_eval_strict": 1 / 3, "lm_eval_flexible": 2 / 3}
    assert get_task("svamp").extra_metrics is None

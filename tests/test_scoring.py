"""`mapd score`: the library function and the command, with gold answers inline or looked up by id."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mapd.cli import app
from mapd.config import TaskConfig
from mapd.errors import MapdError
from mapd.scoring import score_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_score_inline_answers(tmp_path) -> None:
    rows = [
        {"output": "So 9 * 2 = 18.\nThe answer is $18.00.", "answer": "18"},
        {"output": "He has 72.0 apples", "answer": 72},
        {"output": "The answer is 5. Then 6 more.", "answer": "6"},
        {"output": "I am not sure", "answer": "3"},
    ]
    scored = tmp_path / "scored.jsonl"
    report = score_file("gsm8k", _write(tmp_path / "in.jsonl", rows), scored)
    assert (report.total, report.correct, report.no_answer) == (4, 2, 1)
    assert report.accuracy == 0.5
    assert report.lm_eval_strict == 0.0
    assert report.lm_eval_flexible == 0.25  # "72.0" and "$18.00." fail lm-eval; "6" passes
    lines = [json.loads(line) for line in scored.read_text().splitlines()]
    assert [line["correct"] for line in lines] == [True, True, False, False]
    assert lines[0]["extracted"] == "18" and lines[3]["extracted"] is None
    assert lines[1]["output"] == "He has 72.0 apples"


def test_score_reads_mapds_own_predictions(tmp_path) -> None:
    rows = [  # as eval/*/predictions.jsonl writes them
        {"question_id": "a", "gold": "51", "extracted": "3.6", "correct": False, "output": "3.6"},
        {"question_id": "b", "gold": "7", "extracted": "7", "correct": True, "output": "So 7."},
    ]
    report = score_file("svamp", _write(tmp_path / "predictions.jsonl", rows))
    assert (report.total, report.correct) == (2, 1)


def test_score_by_id_from_local_source(tmp_path) -> None:
    rows = [
        {"id": "gsm8k-test-00001", "output": "60 * 3 = 180 miles."},
        {"id": "gsm8k-train-00003", "output": "The answer is -3."},
        {"id": "gsm8k-test-00002", "output": "The answer is 4"},
    ]
    cfg = TaskConfig(name="gsm8k", source="local", path=str(FIXTURES / "gsm8k"))
    report = score_file("gsm8k", _write(tmp_path / "in.jsonl", rows), task_cfg=cfg)
    assert (report.total, report.correct) == (3, 2)


def test_score_yesno_and_choice_tasks(tmp_path) -> None:
    rows = [
        {"output": "I think it is not true.", "answer": False},
        {"output": "Yes, because there is no doubt.", "answer": "yes"},
    ]
    report = score_file("strategyqa", _write(tmp_path / "a.jsonl", rows))
    assert report.correct == 2 and report.lm_eval_strict is None
    rows = [{"output": "I pick option c", "answer": "C"}, {"output": "(A)", "answer": "B"}]
    assert score_file("logiqa", _write(tmp_path / "b.jsonl", rows)).correct == 1


def test_malformed_line_names_line_number(tmp_path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"output": "1", "answer": "1"}\n{"answer": "2"}\n', encoding="utf-8")
    with pytest.raises(MapdError, match=r"in.jsonl line 2: missing field \"output\""):
        score_file("gsm8k", path)
    path.write_text('{"output": "1", "answer": "1"}\nnot json\n', encoding="utf-8")
    with pytest.raises(MapdError, match=r"in.jsonl line 2: invalid JSON"):
        score_file("gsm8k", path)


def test_id_without_source_and_unknown_id(tmp_path) -> None:
    path = _write(tmp_path / "in.jsonl", [{"output": "1", "id": "gsm8k-test-09999"}])
    with pytest.raises(MapdError, match="look up ids"):
        score_file("gsm8k", path)
    cfg = TaskConfig(name="gsm8k", source="local", path=str(FIXTURES / "gsm8k"))
    with pytest.raises(MapdError, match="gsm8k-test-09999"):
        score_file("gsm8k", path, task_cfg=cfg)


def test_cli_score_and_tasks(tmp_path) -> None:
    path = _write(tmp_path / "in.jsonl", [{"id": "chal-3", "output": "The answer is 2.50"}])
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        app,
        [
            "score",
            "--task",
            "svamp",
            "--input",
            str(path),
            "--path",
            str(FIXTURES / "svamp"),
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1/1 correct" in result.output
    assert json.loads(out.read_text())["correct"] is True
    result = CliRunner().invoke(app, ["tasks"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    for name in ("gsm8k", "svamp", "strategyqa", "logiqa", "jsonl", "openai/gsm8k"):
        assert name in result.output


def test_cli_error_exit_code_2(tmp_path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"output": "1"}\n', encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "mapd", "score", "--task", "gsm8k", "--input", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "line 1" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_output_that_is_a_folder_is_refused_before_scoring(tmp_path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"output": "The answer is 4.", "answer": "4"}\n', encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "mapd", "score", "--task", "gsm8k", "--input", str(path)]
        + ["--output", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--output {tmp_path} is a folder" in proc.stderr
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written

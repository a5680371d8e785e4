"""`mapd import-release` on a small fixture in the release's format, then `mapd build`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mapd.errors import MapdError
from mapd.records import Example, Review
from mapd.release import import_release
from mapd.rundir import read_jsonl

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "release").glob("*.json"))


def mapd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mapd", *args], capture_output=True, text=True)


def test_import_then_build_with_the_paper_preset(tmp_path):
    out = tmp_path / "rel"
    result = mapd("import-release", "--task", "svamp", "--output", str(out), *map(str, FIXTURES))
    assert result.returncode == 0, result.stderr
    assert "imported 4 mistakes, 12 feedback, 12 rationales, 24 reviews" in result.stdout
    # the counts reach the stage manifests, so `mapd run`'s funnel line can show them
    exam = json.loads((out / "manifests" / "exam.json").read_text())["summary"]
    teach = json.loads((out / "manifests" / "teach.json").read_text())["summary"]
    assert (exam["mistakes"], teach["feedback"], teach["rationales"]) == (4, 12, 12)

    reviews = read_jsonl(out / "reviews.jsonl", Review)
    gpt = [r for r in reviews if r.rationale_id == "svamp-release-0|gpt-3.5-turbo"]
    assert [(r.reviewer, r.score) for r in gpt] == [("gemini-1.0-pro", 5.0), ("mixtral-8x7b", 5.0)]
    invalid = [r for r in reviews if r.rationale_id == "svamp-release-3|mixtral-8x7b"]
    assert [r.score for r in invalid] == [None, None]  # 83 and 0 are outside 1..5

    # a second import into the folder would mix two runs' files: refused, nothing touched
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = mapd("import-release", "--task", "svamp", "--output", str(out), str(FIXTURES[0]))
    assert again.returncode == 2 and "already holds files" in again.stderr, again.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # a fresh import has no review stage's counts yet: the report leaves them out
    report = mapd("report", str(out), "--format", "md")
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr

    result = mapd("build", str(out / "config.yaml"))
    assert result.returncode == 0, result.stderr
    examples = read_jsonl(out / "dataset" / "train.jsonl", Example)
    # accepted (mean > 3): item 0 all three; item 3 gpt only (3.5; mixtral's 83 and 0 are
    # invalid); item 5 none (3 and 3 is not above 3) -> dropped; item 9 all three
    stats = json.loads((out / "dataset" / "stats.json").read_text())
    assert stats["dropped_no_accepted_rationale"] == 1
    assert stats["rationale_examples"] == stats["feedback_examples"] == 3
    assert {e.question_id for e in examples} == {
        "svamp-release-0",
        "svamp-release-3",
        "svamp-release-9",
    }
    # paper preset: no answer line added, plain rationale targets
    assert stats["answer_lines_added"] == 0

    # the answer check on top: item 0's mixtral (13) and item 9's mistral (20) fail it
    result = mapd(
        "build", str(out / "config.yaml"), "review.require_correct_answer=true", "dataset.pick=all"
    )
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    wrong = {d["rationale_id"] for d in decisions if d["reason"] == "wrong_answer"}
    assert wrong == {"svamp-release-0|mixtral-8x7b", "svamp-release-9|mixtral-8x7b"}


def test_gold_answers_are_normalised(tmp_path):
    import_release("svamp", FIXTURES, tmp_path / "rel")
    mistakes = [
        json.loads(x) for x in (tmp_path / "rel" / "mistakes.jsonl").read_text().splitlines()
    ]
    assert {m["question_id"]: m["answer"] for m in mistakes}["svamp-release-5"] == "12"


def test_bad_release_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(MapdError, match="expected a list"):
        import_release("svamp", [bad], tmp_path / "rel")
    with pytest.raises(MapdError, match="no release import"):
        import_release("logiqa", FIXTURES, tmp_path / "rel")
    result = mapd(
        "import-release",
        "--task",
        "svamp",
        "--output",
        str(tmp_path / "r"),
        str(tmp_path / "nope.json"),
    )
    assert (
        result.returncode == 2 and "not found" in result.stderr and "Traceback" not in result.stderr
    )
    assert not (tmp_path / "r").exists()  # no half-made run folder left behind


@pytest.mark.parametrize(
    "change, task, needle",
    [
        ({"gpt_rationale": "The answer is 5."}, "svamp", "gpt_rationale is not a list"),
        ({"gpt_rationale": []}, "svamp", "gpt_rationale is not a list"),
        ({"gold_answer": "many"}, "svamp", "(task svamp)"),
        ({"question": None}, "svamp", "(task svamp)"),
        ({}, "strategyqa", "(task strategyqa)"),  # SVAMP's files named as StrategyQA's
    ],
)
def test_a_damaged_release_item_is_one_line_and_leaves_no_folder(tmp_path, change, task, needle):
    rationale = next(p for p in FIXTURES if "_rationale_" in p.name)
    items = json.loads(rationale.read_text())
    items[0].update(change)
    damaged = tmp_path / rationale.name
    damaged.write_text(json.dumps(items))
    out = tmp_path / "rel"
    result = mapd("import-release", "--task", task, "--output", str(out), str(damaged))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "error: release item" in result.stderr and needle in result.stderr, result.stderr
    assert not out.exists()

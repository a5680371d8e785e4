"""collect_run on real run folders: counts, joins by id, ledger rows, missing files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mapd.errors import MapdError
from mapd.records import Decision, Example, Review
from mapd.rundir import read_jsonl
from mapd.stages.report.collect import ablation_rows, collect_run, epochs_text, funnel_steps
from mapd.stages.report.html import render_html
from mapd.stages.report.markdown import render_markdown


def test_release_run_counts_and_items(release_run: Path):
    report = collect_run(release_run)
    assert report.name == "paper-svamp"
    assert report.teachers == ["gpt-3.5-turbo", "gemini-1.0-pro", "mixtral-8x7b"]
    decisions = read_jsonl(release_run / "decisions.jsonl", Decision)
    examples = read_jsonl(release_run / "dataset" / "train.jsonl", Example)
    assert report.counts["mistakes"] == 4
    assert report.counts["feedback"] == report.counts["rationales"] == 12
    assert report.counts["accepted"] == sum(d.accepted for d in decisions)
    assert report.counts["examples"] == len(examples) == 6
    assert report.counts["questions"] is None  # imported: no exam
    assert [s for s, _, _ in funnel_steps(report)][0] == "mistakes"

    items = {i.id: i for i in report.items}
    assert set(items) == {d.question_id for d in decisions}
    # item 5 has no accepted rationale (3 and 3 is not above 3): dropped from the dataset
    assert items["svamp-release-5"].used is False
    assert items["svamp-release-0"].used is True
    gpt = items["svamp-release-0"].teachers["gpt-3.5-turbo"]
    assert sorted((who, score) for who, score, _ in gpt.reviews) == [
        ("gemini-1.0-pro", 5.0),
        ("mixtral-8x7b", 5.0),
    ]
    assert gpt.reason == "accepted" and gpt.feedback and gpt.rationale
    mixtral = items["svamp-release-3"].teachers["mixtral-8x7b"]
    assert [score for _, score, _ in mixtral.reviews] == [None, None]
    assert mixtral.reason == "no_valid_review"
    trained = {(e.question_id, e.teacher, e.kind) for e in examples}
    assert {
        (i.id, t, k) for i in report.items for t, p in i.teachers.items() for k in p.trained
    } == trained


def test_disagreements_match_the_review_statistics(release_run: Path):
    report = collect_run(release_run)
    stats = json.loads((release_run / "review.json").read_text())["review_vs_answer"]
    d = report.disagreements
    assert len(d["passed_review_wrong_answer"]) == stats["passed_review_wrong_answer"] == 2
    assert len(d["failed_review_right_answer"]) == stats["failed_review_right_answer"]
    assert set(d["passed_review_wrong_answer"]) == {
        ("svamp-release-0", "mixtral-8x7b"),
        ("svamp-release-9", "mixtral-8x7b"),
    }


def test_scripted_run_has_exam_and_ledger_rows(scripted_run: Path):
    report = collect_run(scripted_run)
    stages = {s.stage: s for s in report.stages}
    assert list(stages)[:4] == ["exam", "teach", "review", "build"]
    n = report.counts["mistakes"]
    assert report.counts["questions"] == report.exam["questions"] >= n > 0
    assert stages["exam"].calls == report.exam["questions"]
    assert stages["teach"].calls == 2 * 3 * n  # feedback and rationale from three teachers
    assert stages["review"].tokens > 0 and stages["build"].calls == 0
    assert all(s.seconds is not None for s in stages.values())


def test_a_stage_counts_the_calls_of_its_last_run(reviewed_twice: Path):
    report = collect_run(reviewed_twice)
    stages = {s.stage: s for s in report.stages}
    reviews = len(read_jsonl(reviewed_twice / "reviews.jsonl", Review))
    # the second review asked nothing new: its calls are all cache hits, as many as reviews
    assert stages["review"].calls == stages["review"].cached == reviews > 0
    assert stages["review"].tokens > 0
    assert stages["teach"].calls == 2 * 3 * report.counts["mistakes"]  # run once
    assert stages["teach"].cached == 0
    assert "s last run." in render_html(report)  # the apostrophe is escaped
    assert "each stage's last run." in render_markdown(report)


def test_partial_runs_and_missing_folders(tmp_path: Path, release_run: Path):
    for name in ("reviews.jsonl", "decisions.jsonl", "review.json", "dataset/train.jsonl"):
        (release_run / name).unlink()
    report = collect_run(release_run)
    assert report.review is None and report.counts["accepted"] is None
    assert all(i.used is None for i in report.items) and len(report.items) == 4

    (tmp_path / "empty").mkdir()
    with pytest.raises(MapdError, match="holds no run"):
        collect_run(tmp_path / "empty")
    with pytest.raises(MapdError, match="not found"):
        collect_run(tmp_path / "nowhere")


def test_accuracy_from_eval_and_ablation(release_run: Path):
    for label, acc in (("trained", 0.5), ("base", 0.25)):
        (release_run / "eval" / label).mkdir(parents=True)
        metrics = {"accuracy": acc, "n": 300, "invalid_rate": 0.1}
        (release_run / "eval" / label / "metrics.json").write_text(json.dumps(metrics))
    (release_run / "ablation").mkdir()
    (release_run / "ablation" / "ablation.csv").write_text(
        "row,description,accuracy,examples,rationale_examples\n"
        "mapd,committee with peer review (MAPD),0.6,730,365\n"
        "single-gpt,single teacher,,10,5\n"
    )
    rows = collect_run(release_run).accuracy
    assert [(r.label, r.accuracy) for r in rows] == [
        ("base", 0.25),
        ("trained", 0.5),
        ("mapd", 0.6),
    ]
    assert rows[0].n == 300 and "10%" in rows[0].note


def test_ablation_rows_name_each_seed(tmp_path: Path):
    path = tmp_path / "ablation.csv"
    path.write_text(
        "row,description,seed,correct,n,accuracy,ci_low,ci_high\n"
        "untrained,untrained student,,17,613,0.0277,0.0174,0.044\n"
        "mapd,MAPD,731,77,613,0.1256,0.1017,0.1542\n"
        "mapd,MAPD,pooled,150,1226,0.1223,0.105,0.142\n"
    )
    rows = ablation_rows(path)
    assert [(r.label, r.n) for r in rows] == [
        ("untrained", 613),
        ("mapd (seed 731)", 613),
        ("mapd (seed pooled)", 1226),
    ]


def test_the_settings_section_shows_the_config_defaults_for_keys_left_out():
    from mapd.config import DatasetConfig, ReviewConfig, TrainConfig
    from mapd.stages.report.collect import config_summary

    written = {"name": "x", "task": {"name": "svamp"}, "dataset": {"mode": "mapd"}}
    summary = dict(config_summary(written))
    assert f"feedback from {DatasetConfig().feedback_from} teachers" in summary["dataset"]
    assert f"> {ReviewConfig().threshold:g} on" in summary["review"]
    assert f"alpha {TrainConfig().alpha}," in summary["train"]


def test_epochs_read_as_words():
    assert [epochs_text(x) for x in (1, 1.0, 2.0, 1.5, "?")] == [
        "1 epoch",
        "1 epoch",
        "2 epochs",
        "1.5 epochs",
        "? epochs",
    ]


def test_base_and_trained_asked_in_different_ways_are_said_with_the_fix_for_that_way():
    from mapd.stages.report.collect import unlike_evals_line

    served = {"backend": "openai", "model": "qwen2.5:1.5b"}
    here = {"backend": "transformers", "model": "runs/x/student/merged"}
    assert unlike_evals_line({"base": served, "trained": served}) is None  # both on servers
    assert unlike_evals_line({"base": here, "trained": here}) is None
    assert unlike_evals_line({"base": served}) is None  # not trained yet
    line = unlike_evals_line({"base": served, "trained": here}) or ""
    assert "untrained student was asked on a server (qwen2.5:1.5b)" in line
    assert "set eval.trained" in line
    line = unlike_evals_line({"base": here, "trained": served}) or ""
    assert "asked in-process" in line and "remove eval.trained" in line

"""The pipeline through `build` against scripted teachers and a scripted student over HTTP."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.stages.scripted_classroom import reply, write_config

from mapd.config import load_config
from mapd.errors import MapdError
from mapd.records import Decision, Example, Review
from mapd.rundir import read_jsonl, run_lock
from mapd.stages.pipeline import run_pipeline
from mapd.testing.loopback import LoopbackServer


@pytest.fixture()
def server():
    with LoopbackServer(reply=reply) as srv:
        yield srv


def run(config: Path, *overrides: str, **kw):
    return asyncio.run(run_pipeline(load_config(config, list(overrides)), **kw))


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_pipeline_through_build(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    summaries = run(config, until="build")
    run_dir = tmp_path / "run"

    exam = json.loads((run_dir / "exam.json").read_text())
    mistakes = lines(run_dir / "mistakes.jsonl")
    assert exam["questions"] == len(lines(run_dir / "attempts.jsonl")) > 0
    assert exam["mistakes"] == len(mistakes) == exam["questions"] - exam["correct"]
    n = len(mistakes)
    assert (
        len(lines(run_dir / "feedback.jsonl")) == len(lines(run_dir / "rationales.jsonl")) == 3 * n
    )

    reviews = read_jsonl(run_dir / "reviews.jsonl", Review)
    assert len(reviews) == 3 * n * 2
    assert all(r.reviewer != r.author for r in reviews)
    # carol wrote "Score: [5]" into her rationales; only the reviewers' replies count
    assert {r.score for r in reviews if r.author == "carol" and r.reviewer == "alice"} == {2.0}
    assert all(r.score is None for r in reviews if r.reviewer == "bob")

    decisions = {d.rationale_id: d for d in read_jsonl(run_dir / "decisions.jsonl", Decision)}
    assert {d.reason for d in decisions.values() if d.teacher == "carol"} == {"low_score"}
    assert {d.reason for d in decisions.values() if d.teacher in ("alice", "bob")} == {"accepted"}

    examples = read_jsonl(run_dir / "dataset" / "train.jsonl", Example)
    assert sum(e.kind == "rationale" for e in examples) == n  # pick: random -> one each
    assert sum(e.kind == "feedback" for e in examples) == n
    assert all(e.teacher != "carol" for e in examples if e.kind == "rationale")
    assert summaries["review"]["review_vs_answer"]["passed_review_wrong_answer"] == 0
    assert summaries["review"]["agreement"]  # pairwise agreement present
    assert (run_dir / "dataset" / "hf" / "dataset_info.json").exists()
    assert len(json.loads((run_dir / "dataset" / "alpaca.json").read_text())) == 2 * n
    trl = lines(run_dir / "dataset" / "trl.jsonl")
    assert trl[0]["prompt"][0]["role"] == "user" and trl[0]["completion"][0]["role"] == "assistant"
    assert (run_dir / "config.yaml").exists()


def test_second_run_sends_nothing_and_skips_stages(tmp_path, server, capsys):
    config = write_config(tmp_path, server.base_url)
    run(config, until="build")
    sent = len(server.requests)
    before = (tmp_path / "run" / "dataset" / "train.jsonl").read_bytes()
    run(config, until="build")
    assert len(server.requests) == sent
    assert "skipped" in capsys.readouterr().err
    assert (tmp_path / "run" / "dataset" / "train.jsonl").read_bytes() == before


def test_changed_setting_reruns_only_what_depends_on_it(tmp_path, server, capsys):
    config = write_config(tmp_path, server.base_url)
    run(config, until="build")
    capsys.readouterr()
    run(config, "dataset.pick=all", until="build")
    err = capsys.readouterr().err
    assert "review: finished earlier" in err and "build done" in err
    examples = read_jsonl(tmp_path / "run" / "dataset" / "train.jsonl", Example)
    mistakes = len(lines(tmp_path / "run" / "mistakes.jsonl"))
    # feedback only from the teachers whose own rationale was accepted: alice and bob
    assert sum(e.kind == "feedback" for e in examples) == 2 * mistakes
    assert sum(e.kind == "rationale" for e in examples) == 2 * mistakes
    assert {e.teacher for e in examples} == {"alice", "bob"}
    stats = json.loads((tmp_path / "run" / "dataset" / "stats.json").read_text())
    assert stats["feedback_of_rejected_teachers"] == mistakes  # the third teacher's
    assert stats["mistakes_without_feedback"] == 0

    run(config, "dataset.pick=all", "dataset.feedback_from=any", until="build")
    examples = read_jsonl(tmp_path / "run" / "dataset" / "train.jsonl", Example)
    assert sum(e.kind == "feedback" for e in examples) == 3 * mistakes  # every teacher's
    stats = json.loads((tmp_path / "run" / "dataset" / "stats.json").read_text())
    assert stats["feedback_of_rejected_teachers"] == 0


def test_answer_line_ends_every_rationale_target(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    run(config, "dataset.pick=all", until="build")
    for e in read_jsonl(tmp_path / "run" / "dataset" / "train.jsonl", Example):
        if e.kind == "rationale":
            assert e.output.splitlines()[-1].startswith("The answer is ")
            assert e.output.count("The answer is") == 1


def test_reviewers_k_draws_that_many(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    run(config, "review.reviewers=1", until="review")
    reviews = read_jsonl(tmp_path / "run" / "reviews.jsonl", Review)
    by_rationale: dict[str, list[str]] = {}
    for r in reviews:
        by_rationale.setdefault(r.rationale_id, []).append(r.reviewer)
    assert all(len(v) == 1 for v in by_rationale.values())
    assert len({v[0] for v in by_rationale.values()}) >= 2  # drawn, not always the same


def test_no_review_baselines_call_no_reviewer(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    run(config, "dataset.mode=single_teacher", "dataset.teacher=carol", until="build")
    assert not any(
        "reviewing another teacher" in r["messages"][-1]["content"] for r in server.requests
    )
    examples = read_jsonl(tmp_path / "run" / "dataset" / "train.jsonl", Example)
    assert examples and {e.teacher for e in examples} == {"carol"}


def test_answer_check_rejects_wrong_rationales(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    run(
        config,
        "dataset.mode=committee_no_review",
        "review.require_correct_answer=true",
        until="review",
    )
    decisions = read_jsonl(tmp_path / "run" / "decisions.jsonl", Decision)
    assert {d.reason for d in decisions if d.teacher == "carol"} == {"wrong_answer"}
    assert {d.reason for d in decisions if d.teacher != "carol"} == {"unreviewed"}


def test_unreachable_teacher_stops_with_clear_message(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    run(config, until="exam")
    with pytest.raises(MapdError) as err:
        run(config, "teachers.1.base_url=http://127.0.0.1:9/v1", until="teach")
    assert "bob" in str(err.value)
    assert (tmp_path / "run" / "mistakes.jsonl").exists()  # nothing done is lost
    assert not (tmp_path / "run" / "feedback.jsonl").exists()
    run(config, until="teach")  # back up: completes
    assert (tmp_path / "run" / "feedback.jsonl").exists()


def test_second_run_on_a_folder_in_use_is_refused(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    with run_lock(tmp_path / "run"):
        result = subprocess.run(
            [sys.executable, "-m", "mapd", "run", str(config), "--until", "exam"],
            capture_output=True,
            text=True,
        )
    assert result.returncode == 2
    assert "in use by another mapd process" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_stage_is_a_clear_error(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    with pytest.raises(MapdError, match="unknown stage"):
        run(config, until="bake")


def test_a_kept_wrong_rationale_gets_no_contradicting_answer_line(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    run(config, "dataset.mode=committee_no_review", "dataset.pick=all", until="build")
    examples = read_jsonl(tmp_path / "run" / "dataset" / "train.jsonl", Example)
    carol = [e for e in examples if e.kind == "rationale" and e.teacher == "carol"]
    assert carol  # kept: no review and no answer check
    for e in carol:
        assert e.output.count("The answer is") == 1  # her own (wrong) line, no gold line added


def test_review_max_tokens_limits_only_the_reviews(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    run(config, "review.max_tokens=7", until="review")
    reviews = [
        r for r in server.requests if "reviewing another teacher" in r["messages"][-1]["content"]
    ]
    others = [r for r in server.requests if r not in reviews]
    assert reviews and {r["max_tokens"] for r in reviews} == {7}
    assert 7 not in {r.get("max_tokens") for r in others}


def test_review_temperature_sets_only_the_reviews(tmp_path, server):
    """The demo's 135M reviewers write a score when greedy, mostly not when sampled."""
    config = write_config(tmp_path, server.base_url)
    run(config, "review.temperature=0", until="review")
    reviews = [
        r for r in server.requests if "reviewing another teacher" in r["messages"][-1]["content"]
    ]
    others = [r for r in server.requests if r not in reviews]
    assert reviews and {r["temperature"] for r in reviews} == {0}
    assert 0 not in {r.get("temperature") for r in others}


def test_the_datasets_export_is_swapped_in_whole(tmp_path, server):
    from datasets import load_from_disk

    config = write_config(tmp_path, server.base_url)
    run(config, until="build")
    run(config, "dataset.pick=all", until="build")
    dataset_dir = tmp_path / "run" / "dataset"
    examples = read_jsonl(dataset_dir / "train.jsonl", Example)
    assert len(load_from_disk(str(dataset_dir / "hf"))) == len(examples)
    assert not (dataset_dir / ".hf.tmp").exists() and not (dataset_dir / ".hf.old").exists()


def test_a_failed_run_writes_its_report_headed_by_the_failure(tmp_path, server):
    """Before, a failed run wrote no report and an older report.html stayed as if it were
    this run's."""
    config = write_config(tmp_path, server.base_url)
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / "report.html").write_text("<html>an older run's report</html>")
    # a threshold no mean score is above: nothing accepted, build stops the run
    with pytest.raises(MapdError, match="none of the"):
        run(config, "review.threshold=4.99", "review.scale_max=5")
    page = (run_dir / "report.html").read_text()
    assert "older run" not in page
    assert "This run failed." in page and "Stage build failed: build: none of the" in page

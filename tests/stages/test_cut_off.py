"""Replies cut off at max_tokens and a reasoning model's thinking, through teach, review, build,
the run summary and the report: marked in the records, never trained, counted per teacher."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from tests.stages.scripted_classroom import reply, write_config

from mapd.config import load_config
from mapd.records import Decision, Example, Feedback, Rationale, Review
from mapd.rundir import read_jsonl
from mapd.stages.pipeline import run_pipeline
from mapd.stages.report.collect import collect_run
from mapd.stages.report.html import render_html
from mapd.stages.report.markdown import render_markdown
from mapd.stages.summary import print_summary
from mapd.testing.loopback import LoopbackServer, ScriptedReply

THINKING = "hidden chain of thought"
MAPD_SCRIPT = Path(sys.executable).with_name("mapd")  # the console script pip installed


def classroom_with_limits(request: dict[str, Any]) -> ScriptedReply:
    """alice thinks aloud (vLLM's reasoning_content); bob's rationales and carol's feedback
    stop at the token limit; carol's reviews stop before their bracketed score."""
    model, prompt = request["model"], request["messages"][-1]["content"]
    if "reviewing another teacher" in prompt:
        if model == "carol-model":
            return ScriptedReply("Step one holds, step 2 of 4", finish_reason="length")
        if reviews_a_cut_off_rationale(request):
            return ScriptedReply("It stops midway. [1]")  # never asked: see the test
        return ScriptedReply(reply({**request, "model": "alice-model"}))  # bob scores too
    text = reply(request)
    if model == "alice-model":
        return ScriptedReply(text, reasoning=THINKING)
    if model == "bob-model" and "Student's answer" not in prompt:
        return ScriptedReply(text[:12], finish_reason="length")
    if model == "carol-model" and "Student's answer" in prompt:
        return ScriptedReply(text[:15], finish_reason="length")
    return ScriptedReply(text)


def reviews_a_cut_off_rationale(request: dict[str, Any]) -> bool:
    """Whether the request asks to review one of bob's rationales, which all stop midway."""
    prompt = request["messages"][-1]["content"]
    return (
        "reviewing another teacher" in prompt
        and "The answer is" not in prompt.split("<<<SOLUTION", 1)[1]
    )


def test_cut_off_replies_are_marked_not_trained_and_counted(tmp_path):
    asked: list[str] = []  # reviewers asked about a cut-off rationale: none should be

    def classroom(request: dict[str, Any]) -> ScriptedReply:
        if reviews_a_cut_off_rationale(request):
            asked.append(request["model"])
        return classroom_with_limits(request)

    with LoopbackServer(reply=classroom) as server:
        config = load_config(write_config(tmp_path, server.base_url), ["dataset.feedback_from=any"])
        summaries = asyncio.run(run_pipeline(config, until="build"))
    run_dir = tmp_path / "run"
    feedback = read_jsonl(run_dir / "feedback.jsonl", Feedback)
    rationales = read_jsonl(run_dir / "rationales.jsonl", Rationale)
    n = len(rationales) // 3
    assert {r.finish_reason for r in rationales if r.teacher == "bob"} == {"length"}
    assert {f.finish_reason for f in feedback if f.teacher == "carol"} == {"length"}
    assert {r.reasoning for r in rationales if r.teacher == "alice"} == {THINKING}

    # bob's cut-off rationales are rejected whatever their reviews: nobody is asked
    assert asked == []
    reviews = read_jsonl(run_dir / "reviews.jsonl", Review)
    assert {r.author for r in reviews} == {"alice", "carol"}
    by_carol = [r for r in reviews if r.reviewer == "carol"]
    assert by_carol and all(r.score is None and r.finish_reason == "length" for r in by_carol)
    assert summaries["review"]["reviews"] == len(reviews) == 4 * n

    decisions = read_jsonl(run_dir / "decisions.jsonl", Decision)
    bob = [d for d in decisions if d.teacher == "bob"]
    assert len(bob) == n and all(d.reason == "cut_off" and not d.scores for d in bob)

    examples = read_jsonl(run_dir / "dataset" / "train.jsonl", Example)
    assert examples and all(THINKING not in e.output for e in examples)
    assert not any(e.teacher == "carol" for e in examples if e.kind == "feedback")
    assert not any(e.teacher == "bob" for e in examples if e.kind == "rationale")
    cut = summaries["build"]["not_trained"]["cut off at max_tokens"]
    assert cut == {"feedback": n, "rationale": n}

    console = Console(record=True, width=300)
    print_summary(config, summaries, time.time(), console)
    printed = console.export_text()
    line = f"teach: alice 0/{2 * n}, bob {n}/{2 * n}, carol {n}/{2 * n}"
    assert line in printed
    assert f"review: alice 0/{n}, bob 0/{2 * n}, carol {n}/{n}" in printed
    report = collect_run(run_dir)
    markdown = render_markdown(report)
    assert "Replies cut off at max_tokens" in markdown and line in markdown
    assert "Replies cut off at max_tokens" in render_html(report)
    assert json.loads((run_dir / "manifests" / "teach.json").read_text())  # stage finished


def test_new_endpoint_fields_enter_a_stage_fingerprint_only_when_set(tmp_path):
    from mapd.stages import teach

    config = write_config(tmp_path, "http://127.0.0.1:1/v1")
    plain = teach.settings(load_config(config))["teachers"][0]
    assert "extra_body" not in plain and "reasoning_effort" not in plain["sampling"]
    changed = teach.settings(
        load_config(
            config,
            ["teachers.0.extra_body={top_k: 20}", "teachers.0.sampling.reasoning_effort=low"],
        )
    )["teachers"][0]
    assert changed["extra_body"] == {"top_k": 20}
    assert changed["sampling"]["reasoning_effort"] == "low"


def student_cut_off_when_first_number_is_odd(request: dict[str, Any]) -> str | ScriptedReply:
    """The classroom, but the student's answer to "What is A + B?" with A odd stops at the
    limit before its final answer."""
    prompt = request["messages"][-1]["content"]
    if request["model"] == "student-model" and first_number_is_odd(prompt):
        return ScriptedReply("First I add the tens, then", finish_reason="length")
    return reply(request)


def first_number_is_odd(text: str) -> bool:
    return int(re.search(r"What is (\d+) \+", text).group(1)) % 2 == 1  # type: ignore[union-attr]


def test_student_answers_cut_off_are_counted_in_the_exam_and_eval_summaries(tmp_path):
    """exam.json and eval/base/metrics.json count them; `mapd eval --base-only`, the run
    summary and the report say which setting to raise."""
    from mapd.stages.evaluate import eval_questions
    from mapd.tasks import load_questions

    with LoopbackServer(reply=student_cut_off_when_first_number_is_odd) as server:
        path = write_config(tmp_path, server.base_url, eval__max_tokens=200)
        config = load_config(path)
        summaries = asyncio.run(run_pipeline(config, until="exam"))
        shown = subprocess.run(
            [str(MAPD_SCRIPT), "eval", str(path), "--base-only"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert shown.returncode == 0, shown.stderr
    train = load_questions(config.task, "train", config.seed).questions
    cut_in_exam = sum(first_number_is_odd(q.question) for q in train)
    tests = eval_questions(config)
    cut_in_eval = sum(first_number_is_odd(q.question) for q in tests)
    assert 0 < cut_in_exam < len(train) and 0 < cut_in_eval <= len(tests)
    exam = json.loads((tmp_path / "run" / "exam.json").read_text())
    metrics = json.loads((tmp_path / "run" / "eval" / "base" / "metrics.json").read_text())
    assert (exam["cut_off"], metrics["cut_off"]) == (cut_in_exam, cut_in_eval)
    eval_line = (
        f"eval base: {cut_in_eval} of {len(tests)} answers cut off at eval.max_tokens=200; "
        "raise eval.max_tokens"
    )
    exam_line = (
        f"exam: {cut_in_exam} of {len(train)} answers cut off at "
        "student.sampling.max_tokens=512; raise student.sampling.max_tokens"
    )
    assert eval_line in shown.stdout

    console = Console(record=True, width=300)
    print_summary(config, {**summaries, "eval": {"base": metrics}}, time.time(), console)
    printed = console.export_text()
    assert exam_line in printed and eval_line in printed
    report = collect_run(tmp_path / "run")
    markdown = render_markdown(report)
    assert exam_line in markdown and eval_line in markdown
    assert eval_line in render_html(report)

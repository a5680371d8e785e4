"""The cascade committee (`committee.mode: cascade`) with loopback teachers: who is asked what.

The scripted classroom (scripted_classroom.py; its sums are 2 + 4i), with carol right on
the sums that leave 2 divided by 8 and one too high on the others: asked first, she settles
those; bob, asked next, gets only the others; alice writes no rationale. Reviewers give [4] to a right sum
and [2] to a wrong one; bob's review replies hold no score.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.stages.scripted_classroom import _sum_in, reply, write_config

from mapd.config import load_config
from mapd.llm import BudgetExceeded
from mapd.stages.pipeline import run_pipeline
from mapd.testing.batch_server import BatchServer
from mapd.testing.loopback import LoopbackServer

CASCADE = [
    "committee.mode=cascade",
    "committee.order=[carol,bob,alice]",
    "review.require_correct_answer=true",
]


def even_carol(request: dict[str, Any]) -> str:
    """carol solves the sums that leave 2 divided by 8; everything else as scripted."""
    prompt = request["messages"][-1]["content"]
    if request["model"] == "carol-model" and kind(request) == "rationale":
        total = _sum_in(prompt)
        if total % 8 == 2:
            return f"Adding gives {total}.\nThe answer is {total}."
    return reply(request)


def kind(request: dict[str, Any]) -> str:
    prompt = request["messages"][-1]["content"]
    if "reviewing another teacher" in prompt:
        return "review"
    if "Student's answer" in prompt:
        return "feedback"
    return "student" if request["model"] == "student-model" else "rationale"


def asked(requests: list[dict[str, Any]]) -> dict[tuple[str, str], list[int]]:
    """(teacher, kind) -> the sums of the questions asked about, sorted."""
    out: dict[tuple[str, str], list[int]] = {}
    for r in requests:
        k = kind(r)
        if k != "student":
            key = (r["model"].removesuffix("-model"), k)
            out.setdefault(key, []).append(_sum_in(r["messages"][-1]["content"]))
    return {key: sorted(v) for key, v in out.items()}


def records(run_dir: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def run(config: Path, until: str, *overrides: str) -> Path:
    cfg = load_config(config, [*CASCADE, *overrides])
    asyncio.run(run_pipeline(cfg, until=until))
    return cfg.run_dir


def test_each_later_teacher_gets_only_the_mistakes_still_open(tmp_path):
    with LoopbackServer(reply=even_carol) as server:
        run_dir = run(write_config(tmp_path, server.base_url), "build")
    sums = sorted(_sum_in(m["question"]) for m in records(run_dir, "mistakes.jsonl"))
    even, odd = [s for s in sums if s % 8 == 2], [s for s in sums if s % 8 != 2]
    assert even and odd
    calls = asked(server.requests)
    assert calls[("carol", "rationale")] == sums
    # carol's wrong (odd) rationales are rejected by the answer check: nobody reviews them;
    # her right ones get one review, from the first other teacher (alice)
    assert calls[("alice", "review")] == sorted(even + odd)
    assert ("bob", "review") not in calls  # one valid score decides: the next is never asked
    assert calls[("bob", "rationale")] == odd
    assert ("alice", "rationale") not in calls
    # feedback only from the teacher whose rationale was accepted
    assert calls[("carol", "feedback")] == even and calls[("bob", "feedback")] == odd
    assert ("alice", "feedback") not in calls

    trace = {t["question_id"]: t for t in records(run_dir, "cascade.jsonl")}
    odd_trace = next(t for t in trace.values() if len(t["steps"]) == 2)
    assert [s["outcome"] for s in odd_trace["steps"]] == ["wrong_answer", "accepted"]
    assert odd_trace["steps"][0]["reviews"] == {} and odd_trace["accepted"] == "bob"
    stats = json.loads((run_dir / "review.json").read_text())["cascade"]
    assert stats["covered"] == len(sums)
    assert stats["cost"]["calls"] == len(server.requests) - len(
        [r for r in server.requests if r["model"] == "student-model"]
    )
    assert [s["teacher"] for s in stats["steps"]] == ["carol", "bob"]
    dataset = json.loads((run_dir / "dataset" / "stats.json").read_text())
    assert dataset["rationale_examples_per_teacher"] == {"bob": len(odd), "carol": len(even)}
    assert dataset["feedback_examples"] == len(sums)


def test_a_reviewer_without_a_score_passes_the_rationale_to_the_next(tmp_path):
    # bob is the cheapest reviewer of alice's rationales, and his replies hold no score
    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url)
        data = yaml.safe_load(config.read_text())
        prices = {"alice": 3.0, "bob": 1.0, "carol": 2.0}
        for t in data["teachers"]:
            t["price"] = {"input_per_mtok": prices[t["name"]]}
        config.write_text(yaml.safe_dump(data))
        run_dir = run(config, "review", "committee.order=[alice]")
    calls = asked(server.requests)
    n = len(records(run_dir, "mistakes.jsonl"))
    assert len(calls[("bob", "review")]) == n and len(calls[("carol", "review")]) == n
    decisions = records(run_dir, "decisions.jsonl")
    assert all(d["accepted"] and d["scores"] == {"carol": 4.0} for d in decisions)


def test_min_reviews_asks_until_that_many_scores(tmp_path):
    with LoopbackServer(reply=reply) as server:
        run(write_config(tmp_path, server.base_url), "review", "committee.min_reviews=2")
    calls = asked(server.requests)
    # carol is always wrong: never reviewed; bob's rationales need two scores: alice's and,
    # as carol comes after alice in the committee, carol's
    assert ("carol", "review") in calls and calls[("carol", "review")] == calls[("alice", "review")]


def test_the_cheapest_teacher_is_asked_first_without_an_order(tmp_path):
    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url)
        data = yaml.safe_load(config.read_text())
        for t in data["teachers"]:
            t["price"] = {"output_per_mtok": {"alice": 5.0, "bob": 1.0, "carol": 3.0}[t["name"]]}
        config.write_text(yaml.safe_dump(data))
        cfg = load_config(config, ["committee.mode=cascade"])
        asyncio.run(run_pipeline(cfg, until="review"))
    order = [r["model"] for r in server.requests if kind(r) == "rationale"]
    assert set(order) == {"bob-model"}  # bob is right on everything: nobody else is asked


def test_a_run_killed_between_steps_resumes_without_sending_again(tmp_path, mapd_home):
    slow = {"bob-model": 3600.0}  # step 2 hangs until the run is killed

    def latency(request: dict[str, Any]) -> float:
        return slow.get(request["model"], 0.0)

    with LoopbackServer(reply=even_carol, latency=latency) as server:
        config = write_config(tmp_path, server.base_url)
        data = yaml.safe_load(config.read_text())
        data["committee"] = {"mode": "cascade", "order": ["carol", "bob", "alice"]}
        data["review"] = {"require_correct_answer": True}
        config.write_text(yaml.safe_dump(data))
        process = subprocess.Popen(
            [sys.executable, "-m", "mapd", "run", str(config), "--until", "teach"],
            env={**os.environ, "MAPD_HOME": str(mapd_home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while not any(r["model"] == "bob-model" for r in server.requests):
                assert time.monotonic() < deadline, "step 2 never started"
                assert process.poll() is None, "the run ended before step 2"
                time.sleep(0.01)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        before = asked(server.requests)
        assert not (tmp_path / "run" / "rationales.jsonl").exists()
        slow.clear()
        run_dir = run(config, "review")
    after = asked(server.requests)
    # step 1 (carol's rationales, alice's reviews of them) came from the cache
    assert after[("carol", "rationale")] == before[("carol", "rationale")]
    assert len(after[("alice", "review")]) == len(records(run_dir, "reviews.jsonl"))
    # bob's rationales were in flight when the run was killed: asked again, once each
    bob = after[("bob", "rationale")]
    assert set(before[("bob", "rationale")]) <= set(bob)
    assert len(bob) == len(before[("bob", "rationale")]) + len(set(bob))
    assert len(records(run_dir, "rationales.jsonl")) == len(before[("carol", "rationale")]) + len(
        set(bob)
    )


def test_with_batch_teachers_each_step_is_one_batch_per_teacher(tmp_path):
    with LoopbackServer(reply=even_carol) as live, BatchServer(reply=even_carol) as batches:
        config = write_config(tmp_path, live.base_url)
        data = yaml.safe_load(config.read_text())
        for t in data["teachers"]:
            t.update(base_url=batches.base_url, batch=True)
            t["limits"]["poll_interval"] = 0.02
        config.write_text(yaml.safe_dump(data))
        run_dir = run(config, "review")
    per_batch = [
        {(params["model"], kind(params)) for _, params, _ in b.items}
        for b in batches.batches.values()
    ]
    # step 1: carol's rationales, alice's reviews; step 2: bob's rationales, alice's reviews;
    # then carol's and bob's feedback
    assert sorted(tuple(sorted(b)) for b in per_batch) == sorted(
        [
            (("carol-model", "rationale"),),
            (("alice-model", "review"),),
            (("bob-model", "rationale"),),
            (("alice-model", "review"),),
            (("carol-model", "feedback"),),
            (("bob-model", "feedback"),),
        ]
    )
    assert json.loads((run_dir / "review.json").read_text())["cascade"]["covered"] > 0


def test_the_budget_stops_the_cascade_like_the_full_committee(tmp_path):
    with LoopbackServer(reply=even_carol) as server:
        config = write_config(tmp_path, server.base_url)
        with pytest.raises(BudgetExceeded):
            run(config, "review", "budget.tokens=200")
        sent = len(server.requests)
        with pytest.raises(BudgetExceeded):  # a second try spends nothing more
            run(config, "review", "budget.tokens=200")
        assert len(server.requests) == sent
    assert not (tmp_path / "run" / "rationales.jsonl").exists()


def test_the_replayed_cascade_of_an_import_counts_what_it_would_ask(tmp_path):
    from mapd.release import import_release

    fixture = Path(__file__).parents[1] / "fixtures" / "release"
    files = sorted(fixture.glob("*svamp*round0.json"))
    out = tmp_path / "rel"
    import_release("svamp", files, out)
    cfg = load_config(
        out / "config.yaml",
        [
            "committee.mode=cascade",
            "review.require_correct_answer=true",
            "dataset.feedback_from=accepted",
        ],
    )
    asyncio.run(run_pipeline(cfg, until="build"))
    stats = json.loads((out / "review.json").read_text())["cascade"]
    mistakes = records(out, "mistakes.jsonl")
    full = stats["full_committee"]
    assert full["calls"] == 12 * len(mistakes)
    cost = stats["cost"]
    kinds = cost["calls_by_kind"]
    steps = stats["steps"]
    assert kinds["rationale"] == sum(s["asked"] for s in steps)
    assert kinds["feedback"] == stats["covered"] == sum(s["accepted"] for s in steps)
    assert cost["calls"] < full["calls"] and cost["tokens"] < full["tokens"]
    decisions = records(out, "decisions.jsonl")
    assert (
        sum(d["reason"] == "not_asked" for d in decisions) == 3 * len(mistakes) - kinds["rationale"]
    )
    accepted = [d for d in decisions if d["accepted"]]
    assert len({d["question_id"] for d in accepted}) == len(accepted)  # one per mistake


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("dataset.feedback_from=any", "dataset.feedback_from: accepted"),
        ("dataset.mode=committee_no_review", "dataset.mode: mapd"),
        ("committee.order=[alice,dave]", "'dave' is none of the teachers"),
        ("committee.min_reviews=3", "only 2 other teacher(s)"),
    ],
)
def test_a_cascade_config_that_cannot_work_is_one_line(tmp_path, mapd_home, override, says):
    config = write_config(tmp_path, "http://127.0.0.1:9")
    result = subprocess.run(
        [sys.executable, "-m", "mapd", "validate", str(config), "committee.mode=cascade", override],
        env={**os.environ, "MAPD_HOME": str(mapd_home)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    said = " ".join(result.stderr.split())
    assert says in said and "Traceback" not in said, said


def test_the_full_committee_is_unchanged_by_the_cascade_settings(tmp_path):
    """A folder's review stage in full mode writes no trace and asks every teacher."""
    with LoopbackServer(reply=reply) as server:
        cfg = load_config(write_config(tmp_path, server.base_url))
        asyncio.run(run_pipeline(cfg, until="review"))
    assert not (cfg.run_dir / "cascade.jsonl").exists()
    assert {re.sub("-model$", "", r["model"]) for r in server.requests} >= {"alice", "bob", "carol"}


def test_min_reviews_not_reached_when_the_reviewers_run_out_rejects(tmp_path):
    # alice's rationales (right) have two possible reviewers: bob (no score) and carol ([4])
    with LoopbackServer(reply=reply) as server:
        run_dir = run(
            write_config(tmp_path, server.base_url),
            "review",
            "committee.order=[alice]",
            "committee.min_reviews=2",
        )
    decisions = records(run_dir, "decisions.jsonl")
    assert decisions and all(
        not d["accepted"] and d["reason"] == "no_valid_review" and d["scores"] == {"carol": 4.0}
        for d in decisions
    )


def test_a_price_change_replays_the_review_stage(tmp_path):
    """The order asked (no committee.order) and the dollars follow the prices: the review
    stage replays when one changes, and the teach stage asks anew (from the cache)."""
    with LoopbackServer(reply=even_carol) as server:
        config = write_config(tmp_path, server.base_url)
        cfg = load_config(config, ["committee.mode=cascade", "review.require_correct_answer=true"])
        asyncio.run(run_pipeline(cfg, until="review"))
        first = json.loads((cfg.run_dir / "review.json").read_text())["cascade"]
        cheap_carol = ["teachers.0.price.input_per_mtok=5", "teachers.1.price.input_per_mtok=3"]
        cfg = load_config(
            config,
            ["committee.mode=cascade", "review.require_correct_answer=true", *cheap_carol],
        )
        asyncio.run(run_pipeline(cfg, until="review"))
        second = json.loads((cfg.run_dir / "review.json").read_text())["cascade"]
    assert first["order"] == ["alice", "bob", "carol"]
    assert second["order"] == ["carol", "bob", "alice"]
    assert second["steps"][0]["teacher"] == "carol" and len(second["steps"]) == 2


def test_a_review_replay_on_records_the_teach_stage_never_asked_stops(tmp_path, mapd_home):
    """--from review with a setting that asks for more reviews than the teach stage did:
    one line naming the way out, nothing decided from reviews nobody gave."""
    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url)
        run(config, "review")
        before = (tmp_path / "run" / "decisions.jsonl").read_text()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mapd",
                "run",
                str(config),
                "--from",
                "review",
                "--until",
                "review",
                *CASCADE,
                "committee.min_reviews=2",
            ],
            env={**os.environ, "MAPD_HOME": str(mapd_home)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    said = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in said, said
    assert "that the teach stage did not ask for" in said and "--from teach" in said
    assert (tmp_path / "run" / "decisions.jsonl").read_text() == before

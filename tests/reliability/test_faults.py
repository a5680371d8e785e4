"""Faulty teachers: every item is done, nothing is paid twice; a down endpoint stops cleanly and resumes."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from tests.reliability.conftest import write_sums
from tests.stages.scripted_classroom import reply, write_config

from mapd.config import load_config
from mapd.errors import MapdError
from mapd.stages.pipeline import run_pipeline
from mapd.testing.faults import FaultyReplies
from mapd.testing.loopback import LoopbackServer

TEACHERS = ("alice", "bob", "carol")
TEACHER_MODELS = {f"{t}-model" for t in TEACHERS}
OUTPUTS = ["feedback.jsonl", "rationales.jsonl", "reviews.jsonl", "decisions.jsonl"]


def limits(**values: object) -> list[str]:
    """The same limits for every teacher, as command-line overrides."""
    return [f"teachers.{i}.limits.{k}={v}" for i in range(3) for k, v in values.items()]


def run(config: Path, *overrides: str, until: str) -> dict:
    return asyncio.run(run_pipeline(load_config(config, list(overrides)), until=until))


def classroom(tmp: Path, base_url: str, questions: int) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    return write_config(tmp, base_url, task__path=str(write_sums(tmp / "sums.jsonl", questions)))


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_mixed_faults_finish_every_item_and_answer_nothing_twice(tmp_path, monkeypatch):
    clean = FaultyReplies(reply, rate=0.0)  # counts answers, injects nothing
    with LoopbackServer(reply=clean) as clean_server:
        config = classroom(tmp_path / "clean", clean_server.base_url, 24)
        monkeypatch.setenv("MAPD_HOME", str(tmp_path / "home-clean"))
        run(config, until="review")

    replies = FaultyReplies(reply, rate=0.3, models=TEACHER_MODELS, seed=3)
    with LoopbackServer(reply=replies) as server:
        config = classroom(tmp_path / "faulty", server.base_url, 24)
        monkeypatch.setenv("MAPD_HOME", str(tmp_path / "home-faulty"))
        run(config, *limits(max_attempts=12, timeout=1.0, concurrency=4), until="review")

    # every kind of fault was met, about 30% of the teachers' requests
    assert set(replies.injected) == {
        "429",
        "500",
        "503",
        "reset",
        "hang",
        "malformed",
        "empty",
        "cut",
    }
    faults = sum(replies.injected.values())
    teacher_requests = sum(r["model"] in TEACHER_MODELS for r in server.requests)
    assert 0.2 < faults / teacher_requests < 0.4
    # every item done, with the same content as a run without faults
    for name in OUTPUTS:
        assert lines(tmp_path / "faulty/run" / name) == lines(tmp_path / "clean/run" / name), name
    n = len(lines(tmp_path / "faulty/run/mistakes.jsonl"))
    assert len(lines(tmp_path / "faulty/run/reviews.jsonl")) == 3 * n * 2
    # counted on the server: no request was answered successfully twice
    assert replies.duplicates() == {}
    assert replies.answered.keys() == clean.answered.keys()  # and every request was answered
    # and in the ledger: one paid success per cache key
    with sqlite3.connect(tmp_path / "home-faulty" / "calls.sqlite") as db:
        paid_twice = db.execute(
            "SELECT key, COUNT(*) FROM calls WHERE ok = 1 AND cached = 0 GROUP BY key"
            " HAVING COUNT(*) > 1"
        ).fetchall()
    assert paid_twice == []


def test_endpoint_down_stops_after_bounded_retries_and_resumes_when_back(tmp_path):
    carol_answers = 0

    def scripted(request: dict) -> str:
        nonlocal carol_answers
        if request["model"] == "carol-model":
            carol_answers += 1
            if carol_answers == 5:  # carol's endpoint goes down after five answers
                replies.down = True
        return reply(request)

    replies = FaultyReplies(scripted, rate=0.0, models={"carol-model"})
    with LoopbackServer(reply=replies) as server:
        config = classroom(tmp_path, server.base_url, 24)
        run(config, until="exam")
        mistakes = (tmp_path / "run/mistakes.jsonl").read_bytes()
        n = len(lines(tmp_path / "run/mistakes.jsonl"))
        overrides = limits(max_attempts=3, concurrency=2)
        with pytest.raises(MapdError) as info:
            run(config, *overrides, until="teach")

        message = str(info.value)
        assert "endpoint carol" in message and "calls done" in message and "not sent" in message
        assert "re-running resumes" in (info.value.hint or "")
        # bounded: the breaker opens after concurrency x max_attempts failures in a row, and
        # at most `concurrency` requests were already on the wire
        assert 1 <= replies.injected["down-503"] <= 2 * 3 + 2
        # nothing done is lost: the exam's files are untouched, nothing half-written
        assert (tmp_path / "run/mistakes.jsonl").read_bytes() == mistakes
        assert not (tmp_path / "run/feedback.jsonl").exists()
        assert not list((tmp_path / "run").glob(".*.tmp"))

        replies.down = False  # back up
        sent_before = len(server.requests)
        run(config, *overrides, until="teach")
        resent = [r["model"] for r in server.requests[sent_before:]]

    assert len(lines(tmp_path / "run/feedback.jsonl")) == 3 * n
    assert len(lines(tmp_path / "run/rationales.jsonl")) == 3 * n
    # the re-run asked carol for the rest only; alice's and bob's answers came from the cache
    assert set(resent) == {"carol-model"}
    assert len(resent) == 2 * n - 5
    assert replies.duplicates() == {}

"""Teach and review through the providers' batch APIs: the same records as live, mixed
committees, and a `mapd run` killed while it waits that resumes without a second batch."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.stages.scripted_classroom import reply, write_config

from mapd.config import load_config
from mapd.stages.pipeline import run_pipeline
from mapd.testing.batch_server import BatchServer
from mapd.testing.loopback import LoopbackServer

RECORDS = ["feedback.jsonl", "rationales.jsonl", "reviews.jsonl", "decisions.jsonl"]


def batch_config(tmp: Path, live_url: str, batch_url: str, kinds: dict[str, object]) -> Path:
    """The scripted classroom with the named teachers sent through `batch_url` in batches."""
    path = write_config(tmp, live_url)
    data = yaml.safe_load(path.read_text())
    for teacher in data["teachers"]:
        kind = kinds.get(teacher["name"])
        if kind:
            teacher.update(base_url=batch_url, batch=kind)
            teacher["limits"]["poll_interval"] = 0.02
    path.write_text(yaml.safe_dump(data))
    return path


def run_until(config: Path, stage: str) -> Path:
    cfg = load_config(config)
    asyncio.run(run_pipeline(cfg, until=stage))
    return cfg.run_dir


@pytest.mark.parametrize("kind", [True, "anthropic"])
def test_teach_and_review_through_batches_give_the_live_records(kind, tmp_path):
    (tmp_path / "live").mkdir()
    (tmp_path / "batch").mkdir()
    with LoopbackServer(reply=reply) as live, BatchServer(reply=reply) as batches:
        live_dir = run_until(write_config(tmp_path / "live", live.base_url), "review")
        teachers = {n: kind for n in ("alice", "bob", "carol")}
        config = batch_config(tmp_path / "batch", live.base_url, batches.base_url, teachers)
        batch_dir = run_until(config, "review")
    for name in RECORDS:
        assert (batch_dir / name).read_text() == (live_dir / name).read_text(), name
    # one batch per teacher for teaching, one per reviewer for reviewing
    assert len(batches.batches) == 6
    assert len(list((batch_dir / "batches").glob("*.json"))) == 6


def test_batch_and_live_teachers_in_one_committee(tmp_path):
    with LoopbackServer(reply=reply) as live, BatchServer(reply=reply) as batches:
        config = batch_config(tmp_path, live.base_url, batches.base_url, {"alice": "anthropic"})
        run_dir = run_until(config, "teach")
    feedback = [json.loads(line) for line in (run_dir / "feedback.jsonl").read_text().splitlines()]
    assert {f["teacher"] for f in feedback} == {"alice", "bob", "carol"}
    sent_live = {r["model"] for r in live.requests}
    assert sent_live == {"student-model", "bob-model", "carol-model"}
    (batch,) = batches.batches.values()
    assert {params["model"] for _, params, _ in batch.items} == {"alice-model"}
    # the live teachers (after alice in the committee) finished while her batch was polled
    with sqlite3.connect(os.environ["MAPD_HOME"] + "/calls.sqlite") as db:
        (last_live,) = db.execute(
            "SELECT MAX(created) FROM calls WHERE stage = 'teach' AND batch IS NULL"
        ).fetchone()
        (collected,) = db.execute(
            "SELECT MIN(created) FROM calls WHERE batch IS NOT NULL"
        ).fetchone()
    assert last_live < collected


def start_run(config: Path, home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mapd", "run", str(config), "--until", "teach"],
        env={**os.environ, "MAPD_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def mapd(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mapd", *args],
        env={**os.environ, "MAPD_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def kill_while_polling(config: Path, home: Path, batches: BatchServer, polls: int) -> None:
    """Start `mapd run` and kill it (SIGKILL) once the batch server was polled `polls` times."""
    process = start_run(config, home)
    try:
        wait_for(lambda: batches.polls >= polls)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def wait_for(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_run_killed_while_polling_resumes_without_a_second_batch(tmp_path, mapd_home):
    with LoopbackServer(reply=reply) as live, BatchServer(reply=reply, tick=0) as batches:
        teachers = {"alice": True, "carol": "anthropic"}
        config = batch_config(tmp_path, live.base_url, batches.base_url, teachers)
        kill_while_polling(config, mapd_home, batches, polls=4)  # both batches submitted and polled
        run_dir = tmp_path / "run"
        assert len(list((run_dir / "batches").glob("*.json"))) == 2
        listed = mapd(mapd_home, "batches", str(run_dir))
        assert listed.returncode == 0, listed.stderr
        assert all(batch_id in listed.stdout for batch_id in batches.batches)
        assert "validating" in listed.stdout and "in_progress" in listed.stdout
        assert "a batch not yet collected is paid" in " ".join(listed.stderr.split())

        batches.advance(60.0)  # the batches finish while no run polls them
        listed = mapd(mapd_home, "batches", str(run_dir))
        assert listed.stdout.count("completed") + listed.stdout.count("ended") == 2, listed.stdout
        assert "in_progress" not in listed.stdout  # asked now, not the last poll's status
        assert len(batches.batches) == 2 and max(batches.submissions.values()) == 1
        batches.tick = 1.0
        run_until(config, "teach")
    assert len(batches.batches) == 2  # polled again, never submitted again
    assert max(batches.submissions.values()) == 1
    mistakes = (run_dir / "mistakes.jsonl").read_text().splitlines()
    assert len((run_dir / "feedback.jsonl").read_text().splitlines()) == 3 * len(mistakes)


def test_mapd_batches_cancel_cancels_the_unfinished_batches(tmp_path, mapd_home):
    with LoopbackServer(reply=reply) as live, BatchServer(reply=reply, tick=0) as batches:
        config = batch_config(tmp_path, live.base_url, batches.base_url, {"alice": True})
        kill_while_polling(config, mapd_home, batches, polls=2)
        cancelled = mapd(mapd_home, "batches", str(tmp_path / "run"), "--cancel")
        (batch,) = batches.batches.values()
        assert cancelled.returncode == 0, cancelled.stderr
        assert batch.stopped_at is not None
        assert "cancelling" in cancelled.stdout
        # the next run, started after the cancel, collects it and submits its items anew
        batches.tick = 1.0
        again = mapd(mapd_home, "run", str(config), "--until", "teach")
        assert again.returncode == 0, again.stderr
        assert len(batches.batches) == 2
    run_dir = tmp_path / "run"
    mistakes = (run_dir / "mistakes.jsonl").read_text().splitlines()
    assert len((run_dir / "feedback.jsonl").read_text().splitlines()) == 3 * len(mistakes)


def test_mapd_batches_of_a_run_without_batches_is_a_user_error(tmp_path, mapd_home):
    result = mapd(mapd_home, "batches", str(tmp_path))
    assert result.returncode == 2
    assert "no batches recorded" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("text", ["{not json", '{"id": "batch_7"}', "[]"])
def test_a_damaged_batch_record_is_one_line_naming_the_batch(tmp_path, mapd_home, text):
    (tmp_path / "batches").mkdir()
    (tmp_path / "batches" / "batch_7.json").write_text(text)
    result = mapd(mapd_home, "batches", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "batch_7.json" in result.stderr and "the batch batch_7 is at the provider" in (
        " ".join(result.stderr.split())
    )


def test_ctrl_c_while_polling_keeps_the_batch_and_says_how_to_resume(tmp_path, mapd_home):
    with LoopbackServer(reply=reply) as live, BatchServer(reply=reply, tick=0) as batches:
        config = batch_config(tmp_path, live.base_url, batches.base_url, {"alice": True})
        process = start_run(config, mapd_home)
        wait_for(lambda: batches.polls >= 2)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
        (batch_id,) = batches.batches
        assert batches.batches[batch_id].stopped_at is None  # not cancelled
    assert process.returncode == 130, stderr + stdout
    said = " ".join(stderr.split())
    assert f"{batch_id} goes on at the provider" in said, stderr
    assert f"mapd batches {tmp_path / 'run'} --cancel" in said


def test_mapd_batches_cancel_during_a_run_is_not_undone_by_a_new_batch(tmp_path, mapd_home):
    with LoopbackServer(reply=reply) as live, BatchServer(reply=reply, tick=0) as batches:
        config = batch_config(tmp_path, live.base_url, batches.base_url, {"alice": True})
        process = start_run(config, mapd_home)
        try:
            wait_for(lambda: batches.polls >= 2)
            cancelled = mapd(mapd_home, "batches", str(tmp_path / "run"), "--cancel")
            assert cancelled.returncode == 0, cancelled.stderr
            batches.tick = 1.0  # the cancel goes through while the run polls on
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        assert len(batches.batches) == 1  # nothing resubmitted by the running process
    assert process.returncode == 2
    assert "batch_cancelled" in stderr and "Traceback" not in stderr
    said = " ".join(stderr.split())
    assert "cancelled with `mapd batches --cancel` while this run waited" in said
    assert "run again to submit them anew" in said


def test_mapd_batches_lists_the_last_poll_when_the_provider_cannot_be_asked(tmp_path, mapd_home):
    with LoopbackServer(reply=reply) as live, BatchServer(reply=reply, tick=0) as batches:
        config = batch_config(tmp_path, live.base_url, batches.base_url, {"alice": True})
        kill_while_polling(config, mapd_home, batches, polls=2)
    listed = mapd(mapd_home, "batches", str(tmp_path / "run"))  # the provider is gone
    assert listed.returncode == 0, listed.stderr
    assert "in_progress" in listed.stdout or "validating" in listed.stdout
    said = " ".join(listed.stderr.split())
    assert "the provider could not be asked" in said and "as of the run's last poll" in said

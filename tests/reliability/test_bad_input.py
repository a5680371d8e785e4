"""Bad input through the command line: one clear error naming the problem and its fix, exit
code 2, no traceback, and nothing an earlier stage produced is lost."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tests.stages.scripted_classroom import IN_PROCESS, _sum_in, reply, write_config

from mapd.config import load_config
from mapd.errors import MapdError
from mapd.llm.store import CallStore, open_store
from mapd.records import Decision, Example, Review
from mapd.rundir import read_jsonl, run_lock
from mapd.stages.pipeline import run_pipeline
from mapd.testing.loopback import Fault, LoopbackServer
from mapd.testing.providers import openai_reasoning

CONTEXT_CHARS = 100_000  # the scripted endpoints' context window


def scripted_with_context(request: dict) -> str | Fault:
    if sum(len(m["content"]) for m in request["messages"]) > CONTEXT_CHARS:
        return Fault.error(400)  # as a real server does: maximum context length exceeded
    if request["model"].startswith("o3") and (refusal := openai_reasoning(request)):
        return refusal  # as OpenAI's reasoning models refuse a body
    return reply(request)


@pytest.fixture(scope="module")
def server():
    with LoopbackServer(reply=scripted_with_context) as srv:
        yield srv


@pytest.fixture
def config(tmp_path, server) -> Path:
    return write_config(tmp_path, server.base_url)


@pytest.fixture
def examined(config) -> dict[Path, bytes]:
    """The exam done; the run folder's files as they are, to check that none is lost."""
    asyncio.run(run_pipeline(load_config(config), until="exam"))
    return snapshot(config.parent / "run")


def snapshot(run_dir: Path) -> dict[Path, bytes]:
    return {
        p: p.read_bytes()
        for p in run_dir.rglob("*")
        if p.is_file() and p.name not in ("config.yaml", ".lock")
    }


def mapd(*args: object, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mapd", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def assert_clear_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    err = result.stderr
    assert result.returncode == 2, err
    assert "Traceback" not in err, err
    error = err[err.index("error: ") :]  # after the progress lines of the stages that ran
    assert "hint: " in error, err
    assert len(error.splitlines()) <= 4 and len(error) < 2000, err
    for needle in needles:
        assert needle in err, err


def assert_kept(before: dict[Path, bytes]) -> None:
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path} changed"


# --- the config ---------------------------------------------------------------------------


def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntask: {name: gsm8k\nstudent: [\n")
    assert_clear_error(mapd("run", path), "malformed YAML at line", "fix the YAML syntax")


def test_unknown_key(config):
    result = mapd("run", config, "task.sourc=local")
    assert_clear_error(result, "task.sourc: unknown key; did you mean `source`?")


def test_wrong_type(config):
    result = mapd("run", config, "teachers.0.limits.concurrency=many")
    assert_clear_error(result, "teachers.0.limits.concurrency", "valid integer", "'many'")


def test_unknown_task(config):
    assert_clear_error(mapd("run", config, "task.name=gsm9k"), "task.name", "gsm8k")


# --- endpoints ----------------------------------------------------------------------------


def test_missing_api_key_variable(config, examined):
    env = {k: v for k, v in os.environ.items() if k != "MAPD_NO_SUCH_KEY"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mapd",
            "run",
            str(config),
            "teachers.0.api_key_env=MAPD_NO_SUCH_KEY",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert_clear_error(
        result, "the API key variable MAPD_NO_SUCH_KEY is not set", "export MAPD_NO_SUCH_KEY"
    )
    assert_kept(examined)


def test_unreachable_base_url(config, examined):
    result = mapd(
        "run",
        config,
        "teachers.1.base_url=http://127.0.0.1:9/v1",
        "teachers.1.limits.max_attempts=2",
    )
    assert_clear_error(
        result, "teacher bob (http://127.0.0.1:9/v1): not reachable", "start the server"
    )
    assert_kept(examined)


def test_a_teacher_whose_provider_refuses_the_body(config, examined, server):
    sent = len(server.requests)
    result = mapd(
        "run",
        config,
        "teachers.1.model=o3-mini",
        "teachers.1.sampling.temperature=0.5",
        "teachers.1.limits.concurrency=1",
    )
    assert_clear_error(
        result,
        "endpoint bob",
        "refused 3 requests",
        "'temperature' does not support 0.5 with this model",
        "sampling.temperature",
    )
    refused = [r for r in server.requests[sent:] if r["model"] == "o3-mini"]
    assert len(refused) == 3  # of 2 per mistake: stopped after three refusals
    assert_kept(examined)


def test_a_model_that_does_not_exist(config, tmp_path):
    for spec in (tmp_path / "no-such-model", "no-such-org/no-such-model"):
        result = mapd("run", config, *IN_PROCESS, f"student.model={spec}")
        assert_clear_error(result, "cannot load model", str(spec))


# --- the dataset --------------------------------------------------------------------------


def test_dataset_file_missing(config, tmp_path):
    result = mapd("run", config, f"task.path={tmp_path / 'nowhere.jsonl'}")
    assert_clear_error(result, "nowhere.jsonl: no such file or folder", "check task.path")


def test_dataset_file_empty(config, tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    result = mapd("run", config, f"task.path={tmp_path / 'empty.jsonl'}")
    assert_clear_error(result, "empty.jsonl is empty", "task.path")


def test_dataset_with_malformed_rows(config, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"id": "a", "question": "What is 1 + 1?", "answer": "2"}\n{"id": "b", "quest\n'
    )
    result = mapd("run", config, f"task.path={path}")
    assert_clear_error(result, "bad.jsonl line 2: invalid JSON", "task.on_bad_row=skip")


def test_dataset_not_utf8(config, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        '{"id": "a", "question": "Caf\u00e9 1 + 1?", "answer": "2"}\n'.encode("latin-1")
    )
    result = mapd("run", config, f"task.path={path}")
    assert_clear_error(result, "latin1.jsonl line 1: not UTF-8", "re-save the file as UTF-8")


def test_a_one_megabyte_question(config, tmp_path, server):
    path = tmp_path / "big.jsonl"
    big = "What is 2 + 3? " + "Think of the numbers. " * 50_000  # about 1 MB
    path.write_text(
        f'{{"id": "big", "question": "{big}", "answer": "5"}}\n'
        + "".join(
            f'{{"id": "q{i}", "question": "What is {i} + 1?", "answer": "{i + 1}"}}\n'
            for i in range(7)
        )
    )
    result = mapd("run", config, f"task.path={path}", "task.test_fraction=0.01")
    assert_clear_error(result, "exam: 1 of ", "HTTP 400")
    assert not (tmp_path / "run" / "attempts.jsonl").exists()


# --- the run folder -----------------------------------------------------------------------


def test_output_folder_that_cannot_be_created(config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = mapd("run", config, f"output_dir={blocker / 'run'}")
    assert_clear_error(result, str(blocker / "run"), "output_dir=")
    assert blocker.read_text() == "not a folder"


def test_a_second_run_on_a_folder_in_use(config, examined):
    with run_lock(config.parent / "run"):
        result = mapd("run", config, "--until", "teach")
    assert_clear_error(result, "is in use by another mapd process", "output_dir=")
    assert_kept(examined)
    assert not (config.parent / "run" / "feedback.jsonl").exists()


# --- a full disk (simulated in this process) ----------------------------------------------


def test_a_full_disk_while_writing_a_stage_output(config, examined, monkeypatch):
    fsync = os.fsync
    writes = []

    def no_space_after_the_config(fd: int) -> None:
        writes.append(fd)
        if len(writes) > 1:  # config.yaml is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr("mapd.rundir.os.fsync", no_space_after_the_config)
    with pytest.raises(MapdError) as info:
        asyncio.run(run_pipeline(load_config(config), until="teach"))
    assert (
        info.value.message == f"disk full while writing {config.parent / 'run' / 'feedback.jsonl'}"
    )
    assert "free some space" in (info.value.hint or "")
    assert_kept(examined)
    run_dir = config.parent / "run"
    assert not (run_dir / "feedback.jsonl").exists() and not list(run_dir.glob(".*.tmp"))


def test_a_full_disk_while_writing_the_call_cache(config, examined, monkeypatch):
    def full_store() -> CallStore:
        store = open_store()
        pages = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk is full"
        return store

    monkeypatch.setattr("mapd.stages.calls.open_store", full_store)
    with pytest.raises(MapdError) as info:
        asyncio.run(run_pipeline(load_config(config), until="teach"))
    assert "disk full" in info.value.message and "calls.sqlite" in info.value.message
    assert "free some space" in (info.value.hint or "")
    assert_kept(examined)
    with sqlite3.connect(os.environ["MAPD_HOME"] + "/calls.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- teachers and reviewers that do not do their job --------------------------------------


def unhelpful(request: dict) -> str:
    """alice works; bob refuses to teach but reviews; carol answers everything with garbage.
    alice and bob review by the final answer."""
    model, prompt = request["model"], request["messages"][-1]["content"]
    if model == "carol-model":
        return "\u2592\u2592 }}{{ ### \ufffd lorem \x07 ipsum"
    if "reviewing another teacher" in prompt:
        solution = prompt.split("<<<SOLUTION", 1)[1]
        return "[4]" if f"The answer is {_sum_in(prompt)}." in solution else "Not a solution. [1]"
    if model == "bob-model":
        return "I'm sorry, but I can't help with that."
    return reply(request)


def test_a_teacher_that_refuses_and_one_that_answers_garbage(tmp_path):
    with LoopbackServer(reply=unhelpful) as srv:
        result = mapd("run", write_config(tmp_path, srv.base_url), "--until", "build")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    decisions = read_jsonl(tmp_path / "run" / "decisions.jsonl", Decision)
    assert {d.teacher for d in decisions if d.accepted} == {"alice"}
    assert {d.reason for d in decisions if d.teacher != "alice"} == {"low_score"}
    examples = read_jsonl(tmp_path / "run" / "dataset" / "train.jsonl", Example)
    assert {e.teacher for e in examples if e.kind == "rationale"} == {"alice"}
    # bob's refusals and carol's garbage are not trained as feedback either
    assert {e.teacher for e in examples if e.kind == "feedback"} == {"alice"}


def test_rationales_all_with_a_wrong_answer_point_at_the_answer_check(tmp_path):
    def all_wrong(request: dict) -> str:
        prompt = request["messages"][-1]["content"]
        if "reviewing another teacher" in prompt:
            return "Clear and complete. [5]"
        if "Student's answer" in prompt or request["model"] == "student-model":
            return reply(request)
        return f"Add them. The answer is {_sum_in(prompt) + 1}."

    with LoopbackServer(reply=all_wrong) as srv:
        config = write_config(tmp_path, srv.base_url)
        result = mapd("run", config, "review.require_correct_answer=true", "--until", "build")
    assert_clear_error(result, "(wrong_answer 21): nothing to train on", "mistakes.jsonl")
    assert "review.require_correct_answer: false" in result.stderr
    assert "[brackets]" not in result.stderr  # the reviews are fine: not pointed at


def test_reviewers_that_never_give_a_parseable_score(tmp_path):
    def no_scores(request: dict) -> str:
        if "reviewing another teacher" in request["messages"][-1]["content"]:
            return "Looks fine to me, the steps follow."
        return reply(request)

    with LoopbackServer(reply=no_scores) as srv:
        config = write_config(tmp_path, srv.base_url)
        result = mapd("run", config, "--until", "review")
        assert result.returncode == 0, result.stderr
        kept = snapshot(tmp_path / "run")
        result = mapd("run", config, "--until", "build")
    assert_clear_error(
        result, "none of the 21 rationales was accepted (no_valid_review 21)", "reviews.jsonl"
    )
    assert_kept(kept)  # the reviews and their raw replies stay for the user to read
    reviews = read_jsonl(tmp_path / "run" / "reviews.jsonl", Review)
    assert len(reviews) == 42 and all(r.score is None and r.raw for r in reviews)

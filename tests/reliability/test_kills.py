"""SIGKILL `mapd run` at random moments and in the middle of file writes; re-running gives the
uninterrupted run's files, no partial JSON is ever seen, and the call database stays sound."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.stages.scripted_classroom import reply, write_config

from mapd.config import load_config
from mapd.stages.pipeline import run_pipeline
from mapd.testing.loopback import LoopbackServer

KILLPOINT = Path(__file__).with_name("killpoint.py")
DATA_FILES = [
    "attempts.jsonl",
    "mistakes.jsonl",
    "exam.json",
    "feedback.jsonl",
    "rationales.jsonl",
    "reviews.jsonl",
    "decisions.jsonl",
    "review.json",
    "dataset/train.jsonl",
    "dataset/trl.jsonl",
    "dataset/alpaca.json",
]


def start(config: Path, home: Path, *prefix: str) -> subprocess.Popen[str]:
    command = prefix or ("-m", "mapd")
    return subprocess.Popen(
        [sys.executable, *command, "run", str(config), "--until", "build"],
        env={**os.environ, "MAPD_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def assert_no_partial_json(run_dir: Path) -> None:
    """Every JSON file parses and every JSON Lines line parses (the `datasets` export is
    written to dataset/.hf.tmp/ and swapped in whole, so only that scratch folder is skipped)."""
    for path in run_dir.rglob("*.json*"):
        parts = path.relative_to(run_dir).parts
        if ".hf.tmp" in parts or ".hf.old" in parts or path.suffix not in (".json", ".jsonl"):
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            json.loads(text)
        else:
            assert text.endswith("\n"), path
            for line in text.splitlines():
                json.loads(line)


def assert_same_as_clean(clean: Path, resumed: Path, home: Path) -> None:
    for name in DATA_FILES:
        assert (clean / name).read_bytes() == (resumed / name).read_bytes(), name
    assert not list(resumed.rglob(".*.tmp")), "temporary files left behind"
    with sqlite3.connect(home / "calls.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def clean_run(tmp: Path, base_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp / "clean").mkdir()
    monkeypatch.setenv("MAPD_HOME", str(tmp / "h-clean"))
    cfg = load_config(write_config(tmp / "clean", base_url))
    asyncio.run(run_pipeline(cfg, until="build"))
    return tmp / "clean" / "run"


@pytest.mark.slow
def test_kill_at_random_moments_and_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    with LoopbackServer(reply=reply, latency=0.03) as server:
        clean = clean_run(tmp_path, server.base_url, monkeypatch)
        (tmp_path / "killed").mkdir()
        config = write_config(tmp_path / "killed", server.base_url)
        home = tmp_path / "h-killed"
        rng = random.Random(7)
        kills = 0
        for _ in range(12):
            proc = start(config, home)
            time.sleep(rng.uniform(0.3, 2.0))
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            assert_no_partial_json(tmp_path / "killed" / "run")
        final = start(config, home)
        assert final.wait(timeout=240) == 0, final.stderr.read()  # type: ignore[union-attr]
        assert kills >= 2
    assert_same_as_clean(clean, tmp_path / "killed" / "run", home)


@pytest.mark.slow
def test_kill_in_the_middle_of_each_file_write_and_resume(tmp_path, monkeypatch):
    """Run k dies at its k-th file write, so the kill point walks through every stage."""
    with LoopbackServer(reply=reply) as server:
        clean = clean_run(tmp_path, server.base_url, monkeypatch)
        (tmp_path / "killed").mkdir()
        config = write_config(tmp_path / "killed", server.base_url)
        home = tmp_path / "h-killed"
        run_dir = tmp_path / "killed" / "run"
        stages_reached = set()
        for k in range(1, 60):
            mode = "torn" if k % 2 else "rename"
            proc = start(config, home, str(KILLPOINT), str(k), mode)
            out, err = proc.communicate(timeout=120)
            if proc.returncode == 0:
                break
            assert proc.returncode == -signal.SIGKILL, err
            stages_reached |= {p.stem for p in (run_dir / "manifests").glob("*.json")}
            assert_no_partial_json(run_dir)
        else:
            pytest.fail("the run never finished")
        assert k > 5 and stages_reached >= {"exam", "teach", "review"}
        final = start(config, home)
        assert final.wait(timeout=120) == 0, final.stderr.read()  # type: ignore[union-attr]
    assert_same_as_clean(clean, run_dir, home)

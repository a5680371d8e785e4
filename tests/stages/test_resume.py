"""Kill `mapd run` with SIGKILL at random moments; re-running gives the uninterrupted result."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.stages.scripted_classroom import reply, write_config

from mapd.testing.loopback import LoopbackServer

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


def start(config: Path, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "MAPD_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "mapd", "run", str(config), "--until", "build"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    with LoopbackServer(reply=reply, latency=0.03) as server:
        clean_dir, killed_dir = tmp_path / "clean", tmp_path / "killed"
        clean_dir.mkdir()
        killed_dir.mkdir()
        clean = start(write_config(clean_dir, server.base_url), tmp_path / "h1")
        assert clean.wait(timeout=240) == 0, clean.stderr.read()  # type: ignore[union-attr]

        config = write_config(killed_dir, server.base_url)
        rng = random.Random(7)
        kills = 0
        for _ in range(12):
            proc = start(config, tmp_path / "h2")
            time.sleep(rng.uniform(0.3, 2.0))
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            for path in (killed_dir / "run").rglob("*.jsonl"):
                for line in path.read_text().splitlines():
                    json.loads(line)  # no partial line anywhere
        final = start(config, tmp_path / "h2")
        assert final.wait(timeout=240) == 0, final.stderr.read()  # type: ignore[union-attr]
        assert kills >= 2

    for name in DATA_FILES:
        a = (clean_dir / "run" / name).read_bytes()
        b = (killed_dir / "run" / name).read_bytes()
        assert a == b, name
    with sqlite3.connect(tmp_path / "h2" / "calls.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

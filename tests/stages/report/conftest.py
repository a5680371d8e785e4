"""Small real run folders for the report tests: the release fixture imported and built, and a
scripted classroom run (exam, teach, review, build, with ledger rows) over the loopback server."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from mapd.config import load_config
from mapd.release import import_release
from mapd.stages.pipeline import run_pipeline
from mapd.testing.loopback import LoopbackServer

TESTS = Path(__file__).resolve().parents[2]
RELEASE = sorted((TESTS / "fixtures" / "release").glob("*.json"))
sys.path.insert(0, str(TESTS / "stages"))  # the scripted classroom lives with the stage tests

from scripted_classroom import reply, write_config  # noqa: E402


def build_run(config: Path, *overrides: str) -> None:
    asyncio.run(run_pipeline(load_config(config, list(overrides)), until="build"))


@pytest.fixture()
def release_run(tmp_path: Path) -> Path:
    """The paper-release fixture (4 mistakes, 3 teachers) imported and built: no exam, no calls."""
    run_dir = tmp_path / "rel"
    import_release("svamp", RELEASE, run_dir)
    build_run(run_dir / "config.yaml")
    return run_dir


@pytest.fixture()
def scripted_run(tmp_path: Path) -> Path:
    """A full run through build against scripted teachers: exam attempts and ledger rows."""
    with LoopbackServer(reply=reply) as server:
        build_run(write_config(tmp_path, server.base_url))
    return tmp_path / "run"


@pytest.fixture()
def reviewed_twice(tmp_path: Path) -> Path:
    """The scripted run with its review stage run a second time (another threshold, every
    reply from the cache): two runs of one stage in the ledger."""
    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url)
        build_run(config)
        build_run(config, "review.threshold=2.5")
    return tmp_path / "run"


ATTACK = (
    '</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2"> & <b>bold</b>'
)


@pytest.fixture()
def poisoned_run(release_run: Path) -> Path:
    """The release run with markup in a question, a feedback, a rationale and a review reply."""
    for name, field in (
        ("mistakes.jsonl", "question"),
        ("feedback.jsonl", "text"),
        ("rationales.jsonl", "text"),
        ("reviews.jsonl", "raw"),
    ):
        path = release_run / name
        lines = path.read_text().splitlines()
        first = json.loads(lines[0])
        first[field] = f"{first[field]} {ATTACK}"
        path.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    return release_run


@pytest.fixture()
def attack() -> str:
    return ATTACK

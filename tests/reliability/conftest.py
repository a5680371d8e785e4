"""Fixtures for the reliability suite: retry waits shortened, a classroom with many questions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry waits (backoff and Retry-After) are recorded and not slept, in this process."""
    waited: list[float] = []

    async def no_wait(seconds: float) -> None:
        waited.append(seconds)
        await asyncio.sleep(0)

    monkeypatch.setattr("mapd.llm.limits.backoff_sleep", no_wait)
    return waited


def write_sums(path: Path, n: int) -> Path:
    """`n` questions "What is A + B?" for the scripted classroom (ids s0, s1, ...)."""
    rows = [
        {"id": f"s{i}", "question": f"What is {7 + i} + {11 * i}?", "answer": str(7 + 12 * i)}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path

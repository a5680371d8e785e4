"""Fixtures for the LLM layer: a loopback server, a store in the test's mapd home, no real sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mapd.config import Limits, ModelEndpoint, Price
from mapd.llm import CallStore, open_store
from mapd.testing.loopback import LoopbackServer


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as s:
        yield s


@pytest.fixture
def store() -> Iterator[CallStore]:
    with open_store() as s:
        yield s


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry waits are recorded instead of slept."""
    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr("mapd.llm.limits.backoff_sleep", fake_sleep)
    return waited


@pytest.fixture
def make_teacher(server: LoopbackServer):
    """An endpoint on the loopback server with the given limits (and price)."""

    def make(price: Price | None = None, **limits: Any) -> ModelEndpoint:
        return ModelEndpoint(
            name="t",
            model="fake-model",
            base_url=server.base_url,
            limits=Limits(**limits),
            price=price or Price(),
        )

    return make

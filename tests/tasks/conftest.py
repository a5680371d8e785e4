"""Fixtures for task tests: the native-format sample files under tests/fixtures and a config maker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mapd.config import TaskConfig

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def local_cfg():
    def make(name: str, path: Path, **kwargs: Any) -> TaskConfig:
        return TaskConfig(name=name, source="local", path=str(path), **kwargs)

    return make

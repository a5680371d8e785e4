"""Shared test fixtures: every test gets its own mapd home, so no test touches ~/.cache/mapd."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def mapd_home(tmp_path, monkeypatch):
    home = tmp_path / "mapd-home"
    monkeypatch.setenv("MAPD_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return home

"""Shared test fixtures: every test gets its own mapd home, so no test touches ~/.cache/mapd."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def children_hear_ctrl_c() -> Iterator[None]:
    """A shell without job control starts a background command with SIGINT ignored, and
    every child inherits that: under `bash .ci/run &` the Ctrl-C tests would send SIGINT to a
    mapd that cannot hear it, and time out. A handler set here is reset to the default in
    each child the tests start, as it is under a terminal."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(autouse=True)
def mapd_home(tmp_path, monkeypatch):
    home = tmp_path / "mapd-home"
    monkeypatch.setenv("MAPD_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return home

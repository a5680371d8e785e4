"""Ctrl-C during `mapd run`: exit 130, one line naming the command that resumes, a prompt
stop, and every reply received before the interrupt kept in the cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from tests.reliability.conftest import write_sums
from tests.stages.scripted_classroom import reply, write_config

from mapd.testing.loopback import LoopbackServer

MAPD_SCRIPT = Path(sys.executable).with_name("mapd")
TEACH_REQUESTS = 3 * 2 * 17  # three teachers, feedback and rationale, 17 mistakes


def is_slow(request: dict[str, Any]) -> bool:
    """A third of the teachers' requests hang until the interrupt; the rest answer at once."""
    text = request["messages"][-1]["content"] + request["model"]
    return request["model"] != "student-model" and zlib.crc32(text.encode()) % 3 == 0


def wait_until_stuck(server: LoopbackServer, quiet: float = 1.0) -> None:
    """Until every endpoint's slots hold only hanging requests: no arrival for `quiet` s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        teach = [r for r in server.requests if r["model"] != "student-model"]
        if teach and time.monotonic() - server.arrivals[-1] > quiet:
            return
        time.sleep(0.1)
    raise AssertionError("the teach stage never got going")


def test_ctrl_c_exits_130_keeps_every_reply_and_the_rerun_sends_only_the_rest(tmp_path):
    hanging = {"on": True}

    def latency(request: dict[str, Any]) -> float:
        return 600.0 if hanging["on"] and is_slow(request) else 0.0

    with LoopbackServer(reply=reply, latency=latency) as server:
        config = write_config(tmp_path, server.base_url)
        write_sums(tmp_path / "q.jsonl", 24)  # 17 training questions, all mistakes
        command = [str(MAPD_SCRIPT), "run", str(config), "--until", "teach"]
        env = {**os.environ, "MAPD_HOME": str(tmp_path / "home")}
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        wait_until_stuck(server)
        teach = [r for r in server.requests if r["model"] != "student-model"]
        answered = sum(not is_slow(r) for r in teach)
        assert 0 < answered < len(teach) < TEACH_REQUESTS
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - interrupted < 5  # the hanging requests are not waited for
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last == f"interrupted; `mapd run {config} --until teach` resumes from here"

        hanging["on"] = False
        sent_before = len(server.requests)
        rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        assert len(server.requests) - sent_before == TEACH_REQUESTS - answered

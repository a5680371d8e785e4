"""A key set in the environment is sent to the endpoint and found in no file, database or output."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from tests.stages.scripted_classroom import reply, write_config

from mapd.testing.loopback import Fault, LoopbackServer


def test_the_key_appears_in_no_file_and_no_output(tmp_path):
    key = f"sk-test-{secrets.token_hex(16)}"
    env = {**os.environ, "TEST_TEACHER_KEY": key, "MAPD_HOME": str(tmp_path / "home")}
    use_key = [f"teachers.{i}.api_key_env=TEST_TEACHER_KEY" for i in range(3)]

    def mapd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mapd", *args], capture_output=True, text=True, env=env
        )

    with LoopbackServer(reply=reply) as server:
        config = str(write_config(tmp_path, server.base_url))
        # errors whose body echoes the Authorization header, as some providers' do
        echo = Fault("error", status=500, echo_auth=True)
        server.faults.extend([echo] * 12)
        done = mapd("run", config, *use_key, "--until", "build")
        assert done.returncode == 0, done.stderr
        assert not server.faults  # every echoing error was sent, and retried past
        # a key the provider rejects: the endpoint is down, and the error is printed
        server.reply = lambda request: Fault("error", status=401, echo_auth=True)
        refused = mapd(
            "run", config, *use_key, "cache=refresh", "--from", "teach", "--until", "teach"
        )
        ledger = mapd("ledger", str(tmp_path / "run"))
        sent = [
            h["authorization"]
            for h, r in zip(server.headers, server.requests, strict=True)
            if r["model"] != "student-model"
        ]

    assert sent and set(sent) == {f"Bearer {key}"}  # the key was really used
    assert refused.returncode == 2 and "incorrect API key provided: Bearer ***" in refused.stderr
    outputs = [
        done.stdout,
        done.stderr,
        refused.stdout,
        refused.stderr,
        ledger.stdout,
        ledger.stderr,
    ]
    assert all(key not in text for text in outputs)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"calls.sqlite", "config.yaml", "feedback.jsonl", "train.jsonl"} <= {
        p.name for p in files
    }
    for path in files:  # the run folder, the cache and ledger database, its WAL, everything
        assert key.encode() not in path.read_bytes(), path

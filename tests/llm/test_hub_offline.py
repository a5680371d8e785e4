"""With no name server for the hub, hub loads go straight to the local cache: a cached model
loads and a missing dataset fails in one line, neither after the hub client's minute of retries.
Run in subprocesses (the offline switch is read from constants set at import), with the hub's
address pointed at a name that cannot resolve (`.invalid` is reserved for that)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.reliability.test_bad_input import assert_clear_error
from tests.stages.scripted_classroom import reply, write_config
from tests.stages.train.toy_run import build_tiny_model

from mapd.testing.loopback import LoopbackServer

NO_HUB = "mapd-no-such-hub.invalid"
REVISION = "0" * 40


def no_network_env(tmp_path: Path) -> dict[str, str]:
    """Offline mode not asked for, no proxy, the hub unresolvable, an empty hub cache."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith(("_OFFLINE", "_PROXY"))}
    return {**env, "HF_ENDPOINT": f"https://{NO_HUB}", "HF_HOME": str(tmp_path / "hf")}


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_a_cached_hub_model_loads_without_retries(tmp_path, tiny_folder):
    env = no_network_env(tmp_path)
    snapshot = Path(env["HF_HOME"]) / "hub" / "models--me--tiny" / "snapshots" / REVISION
    shutil.copytree(tiny_folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(REVISION)
    code = "from mapd.llm.model_loading import load_model; print(load_model('me/tiny').device)"
    result = python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "cpu"
    assert "Retrying" not in result.stderr, result.stderr


def test_a_missing_hub_model_fails_without_retries(tmp_path):
    code = "from mapd.llm.model_loading import load_model; load_model('me/not-cached')"
    result = python(code, no_network_env(tmp_path))
    assert "cannot load model 'me/not-cached'" in result.stderr, result.stderr
    assert "Retrying" not in result.stderr, result.stderr


def test_a_hub_dataset_not_cached_is_one_clear_line(tmp_path):
    with LoopbackServer(reply=reply) as server:
        result = subprocess.run(
            [sys.executable, "-m", "mapd", "run", str(write_config(tmp_path, server.base_url))]
            + ["task.name=gsm8k", "task.source=hub"],
            capture_output=True,
            text=True,
            env=no_network_env(tmp_path),
            timeout=120,
        )
    assert_clear_error(
        result,
        "could not load openai/gsm8k [train]",
        f"not in the local cache, and {NO_HUB} cannot be resolved (offline?)",
        "task.source=local",
    )
    assert "Retrying" not in result.stderr, result.stderr


def test_a_local_folder_asks_no_name_server(tmp_path, monkeypatch):
    import socket

    from mapd.llm.hub_offline import offline_unless_resolvable, unresolvable_hub_host

    def no_lookups(*args: object, **kwargs: object) -> None:
        raise AssertionError("a name server was asked")

    unresolvable_hub_host.cache_clear()
    monkeypatch.setattr(socket, "getaddrinfo", no_lookups)
    with offline_unless_resolvable(str(tmp_path)) as unresolvable:
        assert unresolvable is None


def test_preflight_says_a_missing_hub_model_cannot_be_fetched(tmp_path):
    code = "from mapd.preflight import hub_status; print(hub_status('me/not-cached'))"
    result = python(code, no_network_env(tmp_path))
    assert result.stdout.strip() == (
        f"not in the local hub cache and {NO_HUB} cannot be resolved: loading it will fail"
    ), result.stderr


def test_behind_a_proxy_the_hub_is_not_taken_for_offline(tmp_path):
    """A proxy resolves the hub's name itself; the local resolver not knowing it means nothing."""
    code = "from mapd.llm.hub_offline import unresolvable_hub_host as u; print(u())"
    env = no_network_env(tmp_path)
    assert python(code, env).stdout.strip() == NO_HUB
    proxied = {**env, "HTTPS_PROXY": "http://127.0.0.1:3128", "NO_PROXY": ""}
    assert python(code, proxied).stdout.strip() == "None"
    bypassed = {**proxied, "NO_PROXY": NO_HUB}
    assert python(code, bypassed).stdout.strip() == NO_HUB


class HubModels(BaseHTTPRequestHandler):
    """The hub's model-info route as the hub answers it: one model there, one gated, the
    rest not found (the hub's error code in a header, as huggingface_hub reads it)."""

    def do_GET(self) -> None:
        if self.path.startswith("/api/models/me/there"):
            status, code, body = 200, None, b'{"id": "me/there", "sha": "' + b"0" * 40 + b'"}'
        elif self.path.startswith("/api/models/me/gated"):
            status, code, body = 403, "GatedRepo", b'{"error": "gated"}'
        else:
            status, code, body = 404, "RepoNotFound", b'{"error": "Repository not found"}'
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_weights_the_hub_does_not_have_stop_the_run_where_the_hub_answers(tmp_path):
    """Online, a served name that is no model on the hub (vLLM's --served-model-name
    student) is an error before the run; a model there, or gated, passes."""
    hub = ThreadingHTTPServer(("127.0.0.1", 0), HubModels)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    env = {**no_network_env(tmp_path), "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}"}
    code = (
        "from mapd.config import StudentConfig\n"
        "from mapd.preflight import check_weights\n"
        "for w in ('me/there', 'me/gated', 'me/student'):\n"
        "    s = StudentConfig(model='student', backend='openai', base_url='http://x/v1', weights=w)\n"
        "    print(w, check_weights(s).problem)\n"
    )
    try:
        result = python(code, env)
    finally:
        hub.shutdown()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "me/there None",
        "me/gated None",
        "me/student no such model on the hub",
    ]

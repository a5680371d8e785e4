"""The endpoint check before a run: against a real loopback server, a closed port, unset key
variables and local model specs; and through `mapd validate --check` and `mapd run`."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.stages.scripted_classroom import SERVED_WEIGHTS, reply, write_config

from mapd.config import ModelEndpoint, load_config
from mapd.errors import MapdError
from mapd.preflight import check_before_run, check_endpoint, require_endpoints
from mapd.stages.pipeline import run_pipeline, select_stages
from mapd.testing.batch_server import BatchServer
from mapd.testing.loopback import LoopbackServer

MAPD_SCRIPT = Path(sys.executable).with_name("mapd")


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def teacher(base_url: str, **extra: object) -> ModelEndpoint:
    return ModelEndpoint(name="t", model="t-model", base_url=base_url, **extra)


@pytest.fixture(scope="module")
def server():
    with LoopbackServer(reply=reply, models=("t-model", "other")) as srv:
        yield srv


def test_a_live_server_is_reachable_and_gets_the_key(server, monkeypatch):
    monkeypatch.setenv("MAPD_TEST_KEY", "sk-loopback")
    [found] = check_endpoint("teacher t", teacher(server.base_url, api_key_env="MAPD_TEST_KEY"), 5)
    assert found.problem is None and found.found == "reachable" and not found.worth_saying
    assert server.models_asked[-1]["authorization"] == "Bearer sk-loopback"


def test_a_model_the_server_does_not_list_is_said_but_not_failed(server):
    endpoint = ModelEndpoint(name="t", model="typo-model", base_url=server.base_url)
    [found] = check_endpoint("teacher t", endpoint, 5)
    assert found.problem is None and found.worth_saying
    assert "typo-model is not among its models (did you mean t-model?)" in found.line()
    endpoint = ModelEndpoint(name="t", model="llama-3.3-70b", base_url=server.base_url)
    [found] = check_endpoint("teacher t", endpoint, 5)
    assert "llama-3.3-70b is not among its models (t-model, other)" in found.line()


class StrictServer(BaseHTTPRequestHandler):
    """A server as vLLM and the hosted APIs answer: the API under /v1 only, a key wanted."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != "Bearer sk-right":
            status, body = 401, b'{"error": {"message": "invalid api key"}}'
        elif self.path == "/v1/models":
            status, body = 200, b'{"object": "list", "data": [{"id": "t-model"}]}'
        else:
            status, body = 404, b'{"detail": "Not Found"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def strict_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StrictServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize(
    "path, problem, fix",
    [
        ("", "no API at the root (GET /models: HTTP 404), but one under /v1", "{root}/v1"),
        ("/", "no API at the root (GET /models: HTTP 404), but one under /v1", "{root}/v1"),
        ("/v1/chat/completions", "the URL of one call, not the API root", "without /chat/"),
        ("/api", None, None),  # some other root: the server may serve calls without /models
    ],
)
def test_a_base_url_that_is_not_the_api_root_fails_with_the_fix(
    strict_server, path, problem, fix, monkeypatch
):
    monkeypatch.setenv("MAPD_TEST_KEY", "sk-right")
    endpoint = teacher(strict_server + path, api_key_env="MAPD_TEST_KEY")
    [found] = check_endpoint("teacher t", endpoint, 5)
    if problem is None:
        assert found.problem is None and found.worth_saying
        assert found.found == "reachable (GET /models: HTTP 404)"
    else:
        assert (found.problem or "").startswith(problem)
        assert fix.format(root=strict_server) in (found.fix or "")
    root = teacher(strict_server + "/v1", api_key_env="MAPD_TEST_KEY")
    [found] = check_endpoint("teacher t", root, 5)
    assert found.problem is None and found.found == "reachable"


class WebSite(BaseHTTPRequestHandler):
    """A web server that is no API: an HTML "Not Found" page, or under /app the site's page."""

    def do_GET(self) -> None:
        body = b"<!DOCTYPE html><html><head><title>404 Not Found</title></head><body></body></html>"
        self.send_response(200 if self.path.startswith("/app/") else 404)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def web_site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), WebSite)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("path, status", [("", 404), ("/v1", 404), ("/api", 404), ("/app", 200)])
def test_a_web_page_where_the_api_should_be_fails_without_quoting_the_page(web_site, path, status):
    [found] = check_endpoint("teacher t", teacher(web_site + path), 5)
    assert found.problem == f"GET /models: HTTP {status} (an HTML page, not an API)", found.line()
    assert "ends in /v1 for most servers" in (found.fix or "")
    assert "<" not in found.line() and "Not Found" not in found.line()


def test_validate_check_fails_on_a_web_page_in_one_clear_line(tmp_path, server, web_site):
    config = write_config(tmp_path, server.base_url)
    result = mapd("validate", config, f"teachers.1.base_url={web_site}/v1", "--check")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = f"teacher bob ({web_site}/v1): GET /models: HTTP 404 (an HTML page, not an API)"
    assert line in result.stdout and "ends in /v1 for most servers" in result.stdout
    assert "<" not in result.stdout + result.stderr
    assert "1 of 5 checks failed" in result.stderr


def test_a_server_that_wants_a_key_when_none_is_given_says_to_set_one(strict_server):
    [found] = check_endpoint("teacher t", teacher(strict_server + "/v1"), 5)
    assert found.problem == "the server wants an API key (HTTP 401)"
    assert "None" not in found.line() and "api_key_env" in (found.fix or "")


@pytest.mark.parametrize("kind, route", [(True, "/batches"), ("anthropic", "/messages/batches")])
def test_batch_on_a_server_without_a_batch_api_fails_with_the_fix(
    strict_server, kind, route, monkeypatch
):
    monkeypatch.setenv("MAPD_TEST_KEY", "sk-right")  # as Ollama or vLLM serve: no batches
    endpoint = teacher(strict_server + "/v1", api_key_env="MAPD_TEST_KEY", batch=kind)
    [found] = check_endpoint("teacher t", endpoint, 5)
    assert found.problem is not None and f"(GET {route}: HTTP 404)" in found.problem
    assert "no batch API at this URL" in found.problem and "remove `batch:`" in (found.fix or "")
    with BatchServer() as batches:  # the documented routes: reachable, no complaint
        [found] = check_endpoint("teacher t", teacher(batches.base_url, batch=kind), 5)
    assert found.problem is None, found.line()


def test_a_closed_port_names_the_endpoint_and_the_fix():
    url = closed_port_url()
    [found] = check_endpoint("teacher t", teacher(url), 5)
    assert found.problem is not None and "not reachable" in found.problem
    assert found.line().startswith(f"teacher t ({url}): not reachable")
    assert "start the server" in found.line()  # on this machine: a server that is not up
    with pytest.raises(MapdError, match="1 of 1 checks failed"):
        require_endpoints([found])


def test_an_unreachable_hosted_api_points_at_the_network_not_a_server_to_start():
    [found] = check_endpoint("teacher t", teacher("https://api.example.invalid/v1"), 5)
    assert "not reachable" in (found.problem or "") and "check the network" in found.line()


def test_an_unset_key_variable_fails_without_a_request(server, monkeypatch):
    monkeypatch.delenv("MAPD_NO_SUCH_KEY", raising=False)
    before = len(server.models_asked)
    [found] = check_endpoint(
        "teacher t", teacher(server.base_url, api_key_env="MAPD_NO_SUCH_KEY"), 5
    )
    assert found.problem == "the API key variable MAPD_NO_SUCH_KEY is not set"
    assert "export MAPD_NO_SUCH_KEY" in (found.fix or "")
    assert len(server.models_asked) == before


def test_local_models(tmp_path):
    def check(model: str):
        endpoint = ModelEndpoint(name="s", model=model, backend="transformers")
        return check_endpoint("student", endpoint, 5)[0]

    (tmp_path / "model").mkdir()
    assert check(str(tmp_path / "model")).problem is None
    assert "no such file or folder" in (check(str(tmp_path / "nowhere")).problem or "")
    assert "is not installed" in (check("package:no_such_pkg/m.gguf").problem or "")
    assert "pip install" in (check("package:no_such_pkg/m.gguf").fix or "")
    hub = check("no-such-org/no-such-model")  # HF_HUB_OFFLINE=1 in every test
    assert hub.problem is None and hub.worth_saying and "HF_HUB_OFFLINE" in hub.found
    for spec in ("C:/models/qwen", "C:\\models\\qwen", "models\\qwen"):
        assert "no such file or folder" in (check(spec).problem or ""), spec
    for spec in ("qwen2.5:7b", "huihui_ai/qwen2.5:7b", "Qwen/Qwen2.5-1.5B@main"):
        assert "not a hub id" in (check(spec).problem or ""), spec  # was a traceback
    (tmp_path / "qwen:ft").mkdir()
    assert check(str(tmp_path / "qwen:ft")).problem is None


def test_finished_stages_need_no_endpoint(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    asyncio.run(run_pipeline(load_config(config), until="review"))
    closed = closed_port_url()
    moved = load_config(config, [f"teachers.0.base_url={closed}", f"student.base_url={closed}"])
    assert check_before_run(moved, select_stages(None, "review")) == []
    assert check_before_run(moved, select_stages(None, "build")) == []  # no model needed
    # train and eval are still to run: the student is checked, the teachers are not; the
    # served student's weights are what training loads (student.weights: a package file)
    student, weights = check_before_run(moved, select_stages(None, None))
    assert student.role == "student" and "not reachable" in (student.problem or "")
    assert weights.role == "student weights for training" and weights.problem is None
    assert weights.where == SERVED_WEIGHTS and weights.found.startswith("present")


@pytest.mark.parametrize(
    "weights, problem",
    [
        ("null", "HF_HUB_OFFLINE is set: loading it will fail"),  # student-model: a hub id
        ("qwen2.5:1.5b", "a server's model name, not weights to train"),  # an Ollama tag
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "a server's model name"),
        ("no-org/not-cached", "HF_HUB_OFFLINE is set: loading it will fail"),
    ],
)
def test_weights_that_training_cannot_load_stop_the_run_before_any_call(
    tmp_path, server, weights, problem
):
    config = write_config(tmp_path, server.base_url)
    result = mapd("run", config, f"student.weights={weights}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "student weights for training" in result.stderr and problem in result.stderr
    assert "set student.weights" in result.stderr
    assert not (tmp_path / "run" / "attempts.jsonl").exists()  # no exam, no teacher paid
    # a run that stops before training needs no weights
    checked = mapd("validate", config, f"student.weights={weights}", "--check")
    assert checked.returncode == 2 and problem in checked.stdout
    assert mapd("run", config, f"student.weights={weights}", "--until", "build").returncode == 0


def test_weights_are_only_for_a_served_student(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    result = mapd("validate", config, "student.backend=transformers", "student.base_url=null")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "student.weights: weights is for a student served over HTTP" in result.stderr
    assert "StudentConfig(" not in result.stderr  # the section's value is not repeated


def test_the_trained_students_server_is_checked_once_the_student_is_trained(tmp_path, server):
    closed = closed_port_url()
    cfg = load_config(
        write_config(tmp_path, server.base_url),
        ["eval.trained.model=student", f"eval.trained.base_url={closed}"],
    )
    stages = select_stages(None, None)
    assert all("eval.trained" not in c.role for c in check_before_run(cfg, stages))
    (cfg.run_dir / "student").mkdir(parents=True)
    (cfg.run_dir / "student" / "manifest.json").write_text("{}")
    served = [c for c in check_before_run(cfg, stages) if "eval.trained" in c.role]
    assert len(served) == 1 and "not reachable" in (served[0].problem or "")


def mapd(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MAPD_SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )


def test_validate_check_and_run_find_a_closed_port_before_the_exam(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    url = closed_port_url()
    bad = f"teachers.1.base_url={url}"
    result = mapd("validate", config, bad, "--check")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"teacher bob ({url}): not reachable" in result.stdout
    assert "teacher alice" in result.stdout and "student" in result.stdout
    assert "1 of 5 checks failed" in result.stderr

    chats = len(server.requests)
    result = mapd("run", config, bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"teacher bob ({url}): not reachable" in result.stderr
    assert len(server.requests) == chats  # no exam was taken
    assert not (tmp_path / "run" / "attempts.jsonl").exists()

    assert mapd("validate", config, "--check").returncode == 0


def test_train_alone_checks_a_served_students_weights(tmp_path, server):
    config = write_config(tmp_path, server.base_url)
    result = mapd("train", config, "student.weights=qwen2.5:1.5b")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "a server's model name, not weights to train" in result.stderr
    assert "set student.weights" in result.stderr

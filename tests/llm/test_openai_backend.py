"""The OpenAI-compatible backend: the HTTP request it sends, error bodies, env proxies."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from mapd.config import Limits, ModelEndpoint
from mapd.llm import Request, client_for
from mapd.llm.openai_backend import OpenAIBackend, env_proxy, error_detail, status_error
from mapd.llm.types import BackendError
from mapd.testing.loopback import LoopbackServer


def generate(endpoint: ModelEndpoint, request: Request):
    async def go():
        backend = OpenAIBackend(endpoint)
        try:
            return await backend.generate(request)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_request_body_headers_and_reply(server, monkeypatch):
    monkeypatch.setenv("LOOPBACK_KEY", "sk-test-123")
    endpoint = ModelEndpoint(
        name="t",
        model="m",
        base_url=server.base_url + "/",  # a trailing slash, as Gemini's base URL has
        api_key_env="LOOPBACK_KEY",
        headers={"X-Title": "mapd tests"},
    )
    request = Request.user("What is 2+3?", temperature=0.5, max_tokens=7, stop=("\n\n",))
    completion = generate(endpoint, request)
    sent, headers = server.requests[-1], server.headers[-1]
    assert sent == {
        "model": "m",
        "messages": [{"role": "user", "content": "What is 2+3?"}],
        "temperature": 0.5,
        "max_tokens": 7,
        "stop": ["\n\n"],
    }
    assert headers["authorization"] == "Bearer sk-test-123"
    assert headers["x-title"] == "mapd tests"
    assert headers["user-agent"].startswith("mapd/")
    assert completion.text == "[m] reply to: What is 2+3?"
    assert (completion.finish_reason, completion.prompt_tokens) == ("stop", 3)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"error": {"message": "Rate limit reached", "type": "requests"}}', "Rate limit reached"),
        (b'[{"error": {"code": 429, "message": "Quota exceeded"}}]', "Quota exceeded"),
        (b'{"detail": "Not Found"}', "Not Found"),
        (b'{"error": "model not loaded"}', "model not loaded"),
        (b"<html>502 Bad Gateway</html>", "an HTML page (502 Bad Gateway), not an API reply"),
        (b"", "(no body)"),
    ],
)
def test_error_detail_reads_each_providers_shape(body, detail):
    assert error_detail(body) == detail


def test_status_errors_say_whether_to_retry():
    throttled = status_error(429, {"retry-after-ms": "1500"}, b"{}")
    assert (throttled.retryable, throttled.throttled, throttled.retry_after) == (True, True, 1.5)
    assert status_error(503, {"retry-after": "2"}, b"").retry_after == 2.0
    assert status_error(500, {"retry-after": "2"}, b"").retry_after is None
    assert status_error(401, {}, b"").fatal and not status_error(401, {}, b"").retryable
    assert not status_error(400, {}, b"").retryable


def test_malformed_reply_is_a_retryable_error(monkeypatch):
    with LoopbackServer(reply=lambda request: "ok") as server:
        endpoint = ModelEndpoint(name="t", model="m", base_url=server.base_url)
        monkeypatch.setattr(
            "mapd.testing.loopback.chat_body", lambda request, text: b'{"choices": []}'
        )
        with pytest.raises(BackendError) as info:
            generate(endpoint, Request.user("hi"))
    assert info.value.retryable and "malformed response" in info.value.message


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_requests_go_through_the_proxy_named_in_the_environment(no_proxy_env):
    with LoopbackServer(reply=lambda r: "via proxy") as proxy:
        no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        # a name that is not a loopback host, resolved here to the loopback address
        endpoint = ModelEndpoint(name="t", model="m", base_url="http://teacher.test/v1")
        assert generate(endpoint, Request.user("hi")).text == "via proxy"
        assert proxy.requests[-1]["messages"][0]["content"] == "hi"
        no_proxy_env.setenv("NO_PROXY", "teacher.test")
        assert env_proxy(endpoint.base_url) is None


def test_a_server_on_this_machine_is_reached_without_the_proxy(no_proxy_env, server):
    no_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    for url in (server.base_url, "http://localhost:8000/v1", "http://[::1]:8000/v1"):
        assert env_proxy(url) is None
    endpoint = ModelEndpoint(name="t", model="m", base_url=server.base_url)
    assert generate(endpoint, Request.user("hi")).text.startswith("[m] reply to")


def test_a_configured_header_replaces_the_default_whatever_its_case(server):
    endpoint = ModelEndpoint(
        name="t", model="m", base_url=server.base_url, headers={"authorization": "Token abc"}
    )
    generate(endpoint, Request.user("hi"))
    assert server.headers[-1]["authorization"] == "Token abc"


def test_content_sent_as_a_list_of_parts_is_joined(monkeypatch):
    parts = b'{"choices": [{"message": {"content": [{"type": "text", "text": "The answer"},'
    parts += b' {"type": "text", "text": " is 5."}]}, "finish_reason": "stop"}]}'
    with LoopbackServer() as server:
        monkeypatch.setattr("mapd.testing.loopback.chat_body", lambda request, text: parts)
        endpoint = ModelEndpoint(name="t", model="m", base_url=server.base_url)
        assert generate(endpoint, Request.user("hi")).text == "The answer is 5."


@pytest.mark.parametrize("url", ["http://[bad/v1", "localhost:8000/v1", "ftp://host/v1"])
def test_a_base_url_that_cannot_work_is_refused_by_the_config(url):
    with pytest.raises(ValueError, match="is not an http"):
        ModelEndpoint(name="t", model="m", base_url=url)


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://0.0.0.0:8000/v1", True),
        ("http://127.0.1.1:8000/v1", True),
        ("http://vllm.localhost/v1", True),
        ("http://10.0.0.5:8000/v1", False),
        ("https://api.openai.com/v1", False),
    ],
)
def test_servers_on_this_machine_are_never_proxied(no_proxy_env, url, local):
    no_proxy_env.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    no_proxy_env.setenv("HTTP_PROXY", "http://proxy.test:3128")
    assert (env_proxy(url) is None) == local


def closed_url() -> str:
    """The base URL of a server that has stopped: connections to it are refused."""
    with LoopbackServer() as gone:
        return gone.base_url


def run_batch(endpoint: ModelEndpoint, store, prompts: list[str]) -> list:
    async def go():
        client = client_for(endpoint, store=store, run="r", stage="exam")
        try:
            return await client.complete_many([Request.user(p) for p in prompts])
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_requests_are_spread_over_replicas_under_one_cache_key(store):
    prompts = [f"question {i}" for i in range(12)]
    with LoopbackServer(latency=0.05) as first, LoopbackServer(latency=0.05) as second:
        replicas = ModelEndpoint(
            name="t",
            model="m",
            base_url=[first.base_url, second.base_url],
            limits=Limits(concurrency=4),
        )
        results = run_batch(replicas, store, prompts)
        assert all(r.ok for r in results)
        assert len(first.requests) + len(second.requests) == 12
        assert min(len(first.requests), len(second.requests)) >= 4
        # the same endpoint as a single URL (the first) finds every reply in the cache: the
        # key does not say which replica answered, and a single URL keeps its key
        single = ModelEndpoint(name="t", model="m", base_url=first.base_url)
        again = run_batch(single, store, prompts)
        assert all(r.completion.cached for r in again)
        assert len(first.requests) + len(second.requests) == 12


def test_a_replica_that_refuses_connections_does_not_fail_the_run(store):
    with LoopbackServer() as alive:
        endpoint = ModelEndpoint(
            name="t",
            model="m",
            base_url=[closed_url(), alive.base_url],
            limits=Limits(concurrency=4, max_attempts=1),  # no retry: the failover does it
        )
        results = run_batch(endpoint, store, [f"question {i}" for i in range(10)])
        assert all(r.ok for r in results)
        assert len(alive.requests) == 10


@pytest.fixture
def stalling_url():
    """The base URL of a server that takes no connection: its queue of one (listen(0)) is
    full and never accepted, so the kernel drops every further handshake: a connect stalls."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    filler.close()
    listener.close()


def test_a_replica_that_stalls_on_connect_is_paused_like_one_that_refuses(
    store, sleeps, stalling_url, monkeypatch
):
    """One request waits out the stalled handshake and goes to the healthy replica; the
    next ones go there at once, not to the stalled one every other time."""
    stall = 0.5
    monkeypatch.setattr("mapd.llm.openai_backend.STALL_TIMEOUT", stall)  # 5 s in real use
    with LoopbackServer() as alive:
        endpoint = ModelEndpoint(
            name="t",
            model="m",
            base_url=[stalling_url, alive.base_url],
            limits=Limits(concurrency=1),
        )
        started = time.monotonic()
        results = run_batch(endpoint, store, [f"question {i}" for i in range(10)])
        waited = time.monotonic() - started
        assert all(r.ok and r.attempts == 1 and r.stalls == 0 for r in results)
        assert len(alive.requests) == 10
    assert waited < 3 * stall  # one stall, not one for every other request


def test_every_replica_down_is_still_a_connection_error():
    endpoint = ModelEndpoint(name="t", model="m", base_url=[closed_url(), closed_url()])
    with pytest.raises(BackendError) as info:
        generate(endpoint, Request.user("hi"))
    assert info.value.retryable and "connection error" in info.value.message


def test_each_replica_url_is_checked_by_the_config():
    with pytest.raises(ValueError, match="'ftp://host/v1' is not an http"):
        ModelEndpoint(name="t", model="m", base_url=["http://127.0.0.1:8000/v1", "ftp://host/v1"])
    with pytest.raises(ValueError, match="needs `base_url`"):
        ModelEndpoint(name="t", model="m", base_url=[])


def test_an_html_error_page_is_named_not_quoted():
    """A base_url that is a web server answers its error page; the raw HTML was quoted
    mid-teach."""
    page = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title><style>body{}</style>"
    detail = error_detail(page + b"</head><body><h1>Not Found</h1></body></html>")
    assert detail == "an HTML page (404 Not Found), not an API reply"

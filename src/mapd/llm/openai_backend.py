"""The OpenAI-compatible backend: `POST {base_url}/chat/completions` over one aiohttp session.

Serves OpenAI, Gemini's and Anthropic's OpenAI-compatible endpoints, DeepInfra, Together,
Mistral and self-hosted vLLM, SGLang, Ollama and llama.cpp servers: all of them take the
same JSON body with a bearer key and answer `choices[0].message.content` with `usage`.
`base_url` may list replicas of one model (several vLLM servers): see `Replicas`.

Why aiohttp and not the `openai` SDK's async client: the SDK spends about 1.7 ms of CPU per
request building it (URL objects, header merging, option transforms) before aiohttp sends
it; at 64 requests in flight to a fast server that CPU, not the server, sets the pace
(0.65 of the ideal throughput against 0.9 here; `python bench/llm_throughput.py` measures
both). The body and reply are the documented chat-completions JSON, so nothing of the
SDK's typing is lost: the reply was parsed by hand before as well. There is no retry here:
each failure becomes a BackendError saying whether another attempt is worth it, and the
client's retry loop is the only one.

Providers differ in what body they accept; `request_body` follows their documented rules
(see its docstring) and `extra_body` lets a user change the rest.

A server whose listen queue is full (an overloaded Ollama or llama.cpp, a saturated load
balancer, the standard library's server with its backlog of 5) drops handshakes. The
kernel then sends the SYN again only after 1, 3, 7, 15 ... s, and a request sent on a
connection the server never accepted is resent with doubling gaps, so one request could
wait out the whole `timeout`. A new connection usually gets through at once: so a
connection not made within `STALL_TIMEOUT` (half a shorter `timeout`: `stall_timeout`),
or whose request bytes the server's kernel has not acknowledged within that time
(TCP_USER_TIMEOUT, Linux), is given up and the request retried: a BackendError with
`stalled` set, counted per call (`CallResult.stalls`, the ledger).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import re
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from mapd import __version__
from mapd.config import ModelEndpoint
from mapd.errors import MapdError
from mapd.llm.limits import parse_retry_after
from mapd.llm.types import BackendError, Completion, Request

RETRYABLE_STATUS = {408, 409, 429}
RETRY_AFTER_STATUS = {429, 503}
FATAL_STATUS = {401, 403, 404}  # bad key, no access, unknown model or URL: no request can work
FATAL_FIXES = {
    401: "check the key in the endpoint's api_key_env (a server that wants a key needs one)",
    403: "check that the key in api_key_env has access to the model",
    404: "check base_url (the API root: most servers' ends in /v1, without /chat/completions) "
    "and the model name (`mapd validate CONFIG --check` lists the server's models)",
}
NO_KEY = "none"  # local servers want some key string; they ignore its value
# OpenAI's reasoning models: max_completion_tokens, and temperature/top_p only at 1
REASONING_MODEL_PREFIXES = ("o1", "o3", "o4", "gpt-5")
CHARS_PER_TOKEN = 4  # the estimate used when an endpoint sends no usage
REPLICA_PAUSE = 10.0  # seconds a replica that refused or stalled a connection gets no request
# Seconds for a handshake (the openai SDK's connect timeout), or for the server's kernel to
# acknowledge bytes sent. Only that acknowledgement is timed, not the reply: a long
# generation is not cut.
STALL_TIMEOUT = 5.0


def api_key(endpoint: ModelEndpoint) -> str:
    """The key from the environment variable the config names; never from the config itself."""
    if endpoint.api_key_env is None:
        return NO_KEY
    key = os.environ.get(endpoint.api_key_env, "").strip()
    if not key:
        raise MapdError(
            f"No key found: set {endpoint.api_key_env} for endpoint {endpoint.name!r}",
            f"export {endpoint.api_key_env}=... , or set api_key_env: null for a local server",
        )
    return key


def on_this_machine(host: str) -> bool:
    """localhost, *.localhost, 127.x, ::1, or 0.0.0.0 (the address vLLM prints)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def env_proxy(url: str) -> str | None:
    """The proxy that HTTP(S)_PROXY / NO_PROXY choose for `url`, looked up once per backend
    (aiohttp's own `trust_env` looks it up in a thread for every request). A server on this
    machine (vLLM, Ollama, llama.cpp) is never reached through a proxy."""
    host = urlsplit(url).hostname
    if host is None or on_this_machine(host) or urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(urlsplit(url).scheme)


def stall_timeout(timeout: float) -> float:
    """Seconds for a handshake, or for sent bytes to be acknowledged: STALL_TIMEOUT, or half
    a `timeout` that is not longer. Kept below the whole attempt's timeout so that a dropped
    handshake or request is given up as a stall, not waited out as a timeout (which holds
    the request's slot for a request the server never got)."""
    return STALL_TIMEOUT if timeout > STALL_TIMEOUT else timeout / 2


def stall_limited_socket(addr_info: tuple[Any, ...], stall: float) -> socket.socket:
    """A TCP socket that fails once sent bytes stay unacknowledged for `stall` s (Linux)."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(stall * 1000)))
    return sock


HTML_START = re.compile(r"\s*<(!doctype\s+html|html|head|body)\b", re.IGNORECASE)
HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
HTML_HIDDEN = re.compile(r"<(script|style)\b.*?(</\1>|$)", re.IGNORECASE | re.DOTALL)
HTML_TAG = re.compile(r"<[^>]*>?")


def error_detail(body: bytes) -> str:
    """The provider's error message (`{"error": {"message": ...}}` and its variants), or the
    start of the body."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body[:300].decode("utf-8", "replace").strip()
        if HTML_START.match(text):  # a web server's or proxy's page: named, never quoted
            page = body[:4096].decode("utf-8", "replace")
            title = HTML_TITLE.search(page)
            words = title.group(1) if title else HTML_TAG.sub(" ", HTML_HIDDEN.sub(" ", page))
            return f"an HTML page ({' '.join(words.split())[:80]}), not an API reply"
        return text or "(no body)"
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error
    if isinstance(error, list) and error:  # Gemini answers a list of error objects
        return error_detail(json.dumps(error[0]).encode())
    return str(error)[:300]


# The body fields a provider may refuse, and the config that changes each.
FIELD_FIXES = {
    "max_completion_tokens": "extra_body: {max_completion_tokens: null, max_tokens: N}",
    "max_tokens": "extra_body: {max_tokens: null, max_completion_tokens: N} "
    "(sampling.max_tokens sets N)",
    "temperature": "sampling.temperature (some models take only 1), "
    "or extra_body: {temperature: null}",
    "top_p": "sampling.top_p: 1 (then it is not sent), or extra_body: {top_p: null}",
    "seed": "sampling.seed: null, or extra_body: {seed: null}",
    "reasoning_effort": "sampling.reasoning_effort",
    "stop": "extra_body: {stop: null}",
}


def refusal_hint(detail: str) -> str:
    """Which config fields to change for a refused body, from the fields the message names."""
    named = [f for f in FIELD_FIXES if re.search(rf"(?<![\w.]){f}(?!\w)", detail)]
    if "max_completion_tokens" in named and "max_tokens" in named:  # "use X instead of Y"
        named.remove("max_completion_tokens")
    if not named:
        return (
            "the endpoint refuses the request body: change the setting it names, or add or "
            "remove body fields with the endpoint's extra_body (a key set to null is removed)"
        )
    return "the endpoint refuses the request body; set " + "; or ".join(
        FIELD_FIXES[f] for f in named
    )


def status_error(status: int, headers: Any, body: bytes) -> BackendError:
    retry_after = parse_retry_after(headers) if status in RETRY_AFTER_STATUS else None
    detail = error_detail(body)
    retryable = status in RETRYABLE_STATUS or status >= 500
    fatal = status in FATAL_STATUS
    return BackendError(
        f"HTTP {status}: {detail}",
        retryable=retryable,
        fatal=fatal,
        retry_after=retry_after,
        throttled=status == 429,
        refusal_hint=refusal_hint(detail) if not (retryable or fatal) else None,
        fix=FATAL_FIXES.get(status),
    )


def reasoning_model(model: str) -> bool:
    """An OpenAI reasoning model (o1, o3, o4, gpt-5 families), also behind a prefix such as
    LiteLLM's or OpenRouter's `openai/`."""
    return model.rsplit("/", 1)[-1].lower().startswith(REASONING_MODEL_PREFIXES)


def request_body(endpoint: ModelEndpoint, request: Request) -> dict[str, Any]:
    """The JSON body of a chat request to `endpoint`.

    What is sent by default: model, messages, temperature, max_tokens; top_p only when not
    1; stop, seed and reasoning_effort only when set. OpenAI's reasoning models get
    `max_completion_tokens` and no temperature/top_p unless the config sets them (they
    accept only 1). Then the endpoint's `extra_body` is merged in; its null values remove
    fields.
    """
    model = request.model or endpoint.model
    chosen = endpoint.sampling.model_fields_set
    reasoning = reasoning_model(model)
    body: dict[str, Any] = {"model": model, "messages": list(request.messages)}
    if not reasoning or "temperature" in chosen:
        body["temperature"] = request.temperature
    if request.top_p != 1 and (not reasoning or "top_p" in chosen):
        body["top_p"] = request.top_p
    body["max_completion_tokens" if reasoning else "max_tokens"] = request.max_tokens
    body["stop"] = list(request.stop) if request.stop else None
    # samples of one prompt differ on a server that honours the seed
    body["seed"] = None if request.seed is None else request.seed + request.sample
    body["reasoning_effort"] = request.reasoning_effort
    body = {k: v for k, v in body.items() if v is not None}
    for key, value in endpoint.extra_body.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def parse_reply(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The first choice and the whole reply; a malformed reply is a retryable error."""
    try:
        reply = json.loads(body)
        choice = reply["choices"][0]
        choice["message"].get  # noqa: B018 -- message must be an object
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        start = body[:80].decode("utf-8", "replace")
        raise BackendError(
            f"malformed response (no choices[0].message): {start!r}", retryable=True
        ) from None
    return choice, reply


def reply_text(message: dict[str, Any]) -> str:
    """The message's text; a list of content parts (some providers send one) is joined."""
    content = message.get("content") or ""
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else str(content)


def reply_reasoning(message: dict[str, Any]) -> str | None:
    """A reasoning model's thinking: `reasoning_content` (vLLM until 0.11, DeepSeek, llama.cpp)
    or `reasoning` (vLLM 0.11+, Ollama, OpenRouter). Kept apart from the answer text."""
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def reply_usage(
    usage: dict[str, Any], request: Request, text: str, reasoning: str | None
) -> tuple[int, int, int, bool]:
    """Prompt, completion and reasoning tokens, and whether they are estimated: without
    `usage` they are estimated from the characters, so that a token budget still holds."""
    details = usage.get("completion_tokens_details") or {}
    reasoning_tokens = details.get("reasoning_tokens") or 0
    if usage.get("completion_tokens") is not None:
        return usage.get("prompt_tokens") or 0, usage["completion_tokens"], reasoning_tokens, False
    prompt_chars = sum(len(str(m.get("content", ""))) for m in request.messages)
    thinking = len(reasoning or "") // CHARS_PER_TOKEN
    completion = len(text) // CHARS_PER_TOKEN + thinking
    return prompt_chars // CHARS_PER_TOKEN + 1, completion + 1, thinking, True


class Replicas:
    """The servers of one endpoint (`base_url` as a list). Each request goes to the one with
    the fewest requests in flight (in turn among equals); one that refuses the connection, or
    does not take it within the stall timeout (a full listen queue), gets no request for
    REPLICA_PAUSE seconds, and the request goes to another at once: it never reached a
    server, so nothing is done twice. When every replica fails so, the last error is raised."""

    def __init__(self, base_urls: list[str]) -> None:
        self.urls = [f"{url.rstrip('/')}/chat/completions" for url in base_urls]
        self.proxies = [env_proxy(url) for url in self.urls]
        self.in_flight = [0] * len(self.urls)
        self.paused_until = [0.0] * len(self.urls)
        self.turn = 0

    def pick(self, refused: list[int]) -> int:
        now = time.monotonic()
        n = len(self.urls)
        fresh = [i for i in range(n) if i not in refused]
        up = [i for i in fresh if self.paused_until[i] <= now] or fresh
        self.turn = (self.turn + 1) % n
        return min(up, key=lambda i: (self.in_flight[i], (i - self.turn) % n))

    @asynccontextmanager
    async def post(
        self, session: aiohttp.ClientSession, data: bytes
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response from the first replica that takes the connection."""
        refused: list[int] = []
        while True:
            i = self.pick(refused)
            self.in_flight[i] += 1
            try:
                try:
                    response = await session.post(self.urls[i], data=data, proxy=self.proxies[i])
                except aiohttp.ClientSSLError:
                    raise
                # refused, unresolvable, or the handshake stalled: the request was not sent
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                    self.paused_until[i] = time.monotonic() + REPLICA_PAUSE
                    refused.append(i)
                    if len(refused) < len(self.urls):
                        continue
                    raise
                async with response:
                    yield response
                return
            finally:
                self.in_flight[i] -= 1


class EndpointSession:
    """An endpoint's aiohttp session (and pool of kept-alive connections) in the running
    event loop; call it for the session. It sends `headers` and mapd's User-Agent, except
    where the config's own headers name the same header (they win, whatever the case), and
    keeps no cookies (an API sets none worth keeping). `connector` makes the session's
    connector; aiohttp's default without it."""

    def __init__(
        self,
        endpoint: ModelEndpoint,
        headers: dict[str, str],
        timeout: aiohttp.ClientTimeout,
        connector: Callable[[], aiohttp.BaseConnector] | None = None,
    ) -> None:
        defaults = {"User-Agent": f"mapd/{__version__}", **headers}
        own = {name.lower() for name in endpoint.headers}
        self.headers = {k: v for k, v in defaults.items() if k.lower() not in own}
        self.headers.update(endpoint.headers)
        self.timeout = timeout
        self.connector = connector
        self.session: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        """One session per event loop: a session belongs to the loop it was made in."""
        loop = asyncio.get_running_loop()
        if self.session is not None and not self.session.closed:
            if self.session._loop is loop:
                return self.session
            self.session.detach()  # its loop has ended: its connections went with it
        self.session = aiohttp.ClientSession(
            connector=self.connector() if self.connector else None,
            timeout=self.timeout,
            headers=self.headers,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self.session

    async def aclose(self) -> None:
        if self.session is not None and not self.session.closed:
            await self.session.close()


class OpenAIBackend:
    kind = "openai"
    rate_limited = True

    def __init__(self, endpoint: ModelEndpoint) -> None:
        key = api_key(endpoint)
        self.endpoint = endpoint
        self.secrets = (key,) if key != NO_KEY else ()
        self.base_url = ", ".join(endpoint.base_urls)
        # the first URL: the same key whichever replica answers, and a single URL's old key
        self.cache_scope = endpoint.base_urls[0]
        self.replicas = Replicas(endpoint.base_urls)
        self.url = self.replicas.urls[0]
        self.model = endpoint.model
        self.timeout = endpoint.limits.timeout
        connections = endpoint.limits.concurrency  # one per request allowed in flight
        stall = self.stall = stall_timeout(self.timeout)
        self.session = EndpointSession(
            endpoint,
            {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            aiohttp.ClientTimeout(total=self.timeout, sock_connect=stall),
            lambda: aiohttp.TCPConnector(
                limit=connections, socket_factory=partial(stall_limited_socket, stall=stall)
            ),
        )

    def _body(self, request: Request) -> bytes:
        return json.dumps(request_body(self.endpoint, request)).encode()

    async def generate(self, request: Request) -> Completion:
        started = time.monotonic()
        try:
            async with self.replicas.post(self.session(), self._body(request)) as response:
                status, body = response.status, await response.read()
                headers = response.headers
        except aiohttp.ConnectionTimeoutError:  # before TimeoutError: it is one too
            message = f"connect timed out after {self.stall:g} s (server not accepting)"
            raise BackendError(message, retryable=True, stalled=True) from None
        except (TimeoutError, asyncio.TimeoutError):
            raise BackendError(
                f"timed out after {self.timeout:g} s: raise limits.timeout, or lower "
                "limits.concurrency for a server that answers few requests at a time",
                retryable=True,
                timed_out=True,
            ) from None
        except (aiohttp.ClientSSLError, aiohttp.InvalidURL) as exc:  # no retry can help
            message = f"cannot reach {self.url}: {type(exc).__name__}: {exc}"
            raise BackendError(message, fatal=True) from None
        except aiohttp.ClientError as exc:  # refused, reset, cut short, not acknowledged
            stalled = isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT
            message = f"connection error: {type(exc).__name__}: {exc}"
            raise BackendError(message, retryable=True, stalled=stalled) from None
        if status >= 400:
            raise status_error(status, headers, body)
        choice, reply = parse_reply(body)
        text, reasoning = reply_text(choice["message"]), reply_reasoning(choice["message"])
        prompt, completion, thinking, estimated = reply_usage(
            reply.get("usage") or {}, request, text, reasoning
        )
        return Completion(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency=time.monotonic() - started,
            backend=self.kind,
            model=reply.get("model") or request.model or self.model,
            reasoning=reasoning,
            reasoning_tokens=thinking,
            estimated=estimated,
        )

    async def aclose(self) -> None:
        await self.session.aclose()

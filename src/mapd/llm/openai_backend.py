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
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
NO_KEY = "none"  # local servers want some key string; they ignore its value
REPLICA_PAUSE = 10.0  # seconds a replica that refused a connection gets no new request


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


def error_detail(body: bytes) -> str:
    """The provider's error message (`{"error": {"message": ...}}` and its variants), or the
    start of the body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace").strip() or "(no body)"
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error
    if isinstance(error, list) and error:  # Gemini answers a list of error objects
        return error_detail(json.dumps(error[0]).encode())
    return str(error)[:300]


def status_error(status: int, headers: Any, body: bytes) -> BackendError:
    retry_after = parse_retry_after(headers) if status in RETRY_AFTER_STATUS else None
    return BackendError(
        f"HTTP {status}: {error_detail(body)}",
        retryable=status in RETRYABLE_STATUS or status >= 500,
        fatal=status in FATAL_STATUS,
        retry_after=retry_after,
        throttled=status == 429,
    )


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


class Replicas:
    """The servers of one endpoint (`base_url` as a list). Each request goes to the one with
    the fewest requests in flight (in turn among equals); one that refuses the connection gets
    no request for REPLICA_PAUSE seconds, and the request goes to another at once: it never
    reached a server, so nothing is done twice."""

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
                except aiohttp.ClientConnectorError:  # refused or unresolvable: not sent
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


class OpenAIBackend:
    kind = "openai"
    rate_limited = True

    def __init__(self, endpoint: ModelEndpoint) -> None:
        key = api_key(endpoint)
        self.secrets = (key,) if key != NO_KEY else ()
        self.base_url = ", ".join(endpoint.base_urls)
        # the first URL: the same key whichever replica answers, and a single URL's old key
        self.cache_scope = endpoint.base_urls[0]
        self.replicas = Replicas(endpoint.base_urls)
        self.url = self.replicas.urls[0]
        self.model = endpoint.model
        defaults = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "User-Agent": f"mapd/{__version__}",
        }
        own = {name.lower() for name in endpoint.headers}  # the config's headers win
        self.headers = {k: v for k, v in defaults.items() if k.lower() not in own}
        self.headers.update(endpoint.headers)
        self.timeout = endpoint.limits.timeout
        self.connections = endpoint.limits.concurrency  # one per request allowed in flight
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """One session (and pool of kept-alive connections) per event loop."""
        loop = asyncio.get_running_loop()
        if self._session is not None and not self._session.closed:
            if self._session._loop is loop:
                return self._session
            self._session.detach()  # its loop has ended: its connections went with it
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers=self.headers,
            cookie_jar=aiohttp.DummyCookieJar(),  # an API sets no cookies worth keeping
        )
        return self._session

    def _body(self, request: Request) -> bytes:
        args: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": list(request.messages),
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "stop": list(request.stop) if request.stop else None,
            # samples of one prompt differ on a server that honours the seed
            "seed": None if request.seed is None else request.seed + request.sample,
        }
        return json.dumps({k: v for k, v in args.items() if v is not None}).encode()

    async def generate(self, request: Request) -> Completion:
        started = time.monotonic()
        try:
            async with self.replicas.post(self.session(), self._body(request)) as response:
                status, body = response.status, await response.read()
                headers = response.headers
        except (TimeoutError, asyncio.TimeoutError):
            raise BackendError(f"timed out after {self.timeout:g} s", retryable=True) from None
        except (aiohttp.ClientSSLError, aiohttp.InvalidURL) as exc:  # no retry can help
            message = f"cannot reach {self.url}: {type(exc).__name__}: {exc}"
            raise BackendError(message, fatal=True) from None
        except aiohttp.ClientError as exc:  # refused, reset, cut short
            message = f"connection error: {type(exc).__name__}: {exc}"
            raise BackendError(message, retryable=True) from None
        if status >= 400:
            raise status_error(status, headers, body)
        choice, reply = parse_reply(body)
        usage = reply.get("usage") or {}
        return Completion(
            text=reply_text(choice["message"]),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            latency=time.monotonic() - started,
            backend=self.kind,
            model=reply.get("model") or request.model or self.model,
        )

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

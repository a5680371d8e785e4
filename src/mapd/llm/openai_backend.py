"""The OpenAI-compatible backend: `POST {base_url}/chat/completions` over one aiohttp session.

Serves OpenAI, Gemini's and Anthropic's OpenAI-compatible endpoints, DeepInfra, Together,
Mistral and self-hosted vLLM, SGLang, Ollama and llama.cpp servers: all of them take the
same JSON body with a bearer key and answer `choices[0].message.content` with `usage`.

Why aiohttp and not the `openai` SDK's async client: the SDK spends about 1.7 ms of CPU per
request building it (URL objects, header merging, option transforms) before aiohttp sends
it; at 64 requests in flight to a fast server that CPU, not the server, sets the pace
(0.65 of the ideal throughput against 0.9 here; `python bench/llm_throughput.py` measures
both). The body and reply are the documented chat-completions JSON, so nothing of the
SDK's typing is lost: the reply was parsed by hand before as well. There is no retry here:
each failure becomes a BackendError saying whether another attempt is worth it, and the
client's retry loop is the only one.

A server whose listen queue is full (an overloaded Ollama or llama.cpp, a saturated load
balancer, the standard library's server with its backlog of 5) drops handshakes. The
kernel then sends the SYN again only after 1, 3, 7, 15 ... s, and a request sent on a
connection the server never accepted is resent with doubling gaps, so one request waited
out the whole `timeout` (120 s) in 3 of 5 runs of 2,000 requests. A new connection
usually gets through at once: so a connection not made within `STALL_TIMEOUT`, or whose
request bytes the server's kernel has not acknowledged within it (TCP_USER_TIMEOUT, Linux),
is given up and the request retried; `stalls` counts these.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import os
import socket
import time
import urllib.request
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


def stall_limited_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """A TCP socket that fails once sent bytes stay unacknowledged for STALL_TIMEOUT (Linux)."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(STALL_TIMEOUT * 1000))
    return sock


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


class OpenAIBackend:
    kind = "openai"
    rate_limited = True

    def __init__(self, endpoint: ModelEndpoint) -> None:
        key = api_key(endpoint)
        self.secrets = (key,) if key != NO_KEY else ()
        self.base_url = endpoint.base_url
        self.cache_scope = endpoint.base_url
        self.url = f"{(endpoint.base_url or '').rstrip('/')}/chat/completions"
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
        self.proxy = env_proxy(self.url)
        self._session: aiohttp.ClientSession | None = None
        self.stalls = 0  # connections given up: not made, or the request not acknowledged

    def session(self) -> aiohttp.ClientSession:
        """One session (and pool of kept-alive connections) per event loop."""
        loop = asyncio.get_running_loop()
        if self._session is not None and not self._session.closed:
            if self._session._loop is loop:
                return self._session
            self._session.detach()  # its loop has ended: its connections went with it
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.connections, socket_factory=stall_limited_socket
            ),
            timeout=aiohttp.ClientTimeout(
                total=self.timeout, sock_connect=min(STALL_TIMEOUT, self.timeout)
            ),
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
            "seed": request.seed,
        }
        return json.dumps({k: v for k, v in args.items() if v is not None}).encode()

    async def generate(self, request: Request) -> Completion:
        started = time.monotonic()
        try:
            async with self.session().post(
                self.url, data=self._body(request), proxy=self.proxy
            ) as response:
                status, body = response.status, await response.read()
                headers = response.headers
        except aiohttp.ConnectionTimeoutError:  # before TimeoutError: it is one too
            self.stalls += 1
            message = f"connect timed out after {STALL_TIMEOUT:g} s (server not accepting)"
            raise BackendError(message, retryable=True) from None
        except (TimeoutError, asyncio.TimeoutError):
            raise BackendError(f"timed out after {self.timeout:g} s", retryable=True) from None
        except (aiohttp.ClientSSLError, aiohttp.InvalidURL) as exc:  # no retry can help
            message = f"cannot reach {self.url}: {type(exc).__name__}: {exc}"
            raise BackendError(message, fatal=True) from None
        except aiohttp.ClientError as exc:  # refused, reset, cut short, not acknowledged
            stalled = isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT
            self.stalls += stalled
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

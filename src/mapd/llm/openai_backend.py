"""The OpenAI-compatible backend: `/v1/chat/completions` through the `openai` async client.

Serves OpenAI, Gemini's and Anthropic's OpenAI-compatible endpoints, DeepInfra, Together,
Mistral and self-hosted vLLM, SGLang, Ollama and llama.cpp servers. The SDK's own retries
are off (`max_retries=0`): the client's retry loop is the only one. Each SDK error is
turned into a BackendError saying whether another attempt is worth it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import httpx2
import openai

from mapd.config import ModelEndpoint
from mapd.errors import MapdError
from mapd.llm.limits import parse_retry_after
from mapd.llm.types import BackendError, Completion, Request

RETRYABLE_STATUS = {408, 409, 429}
RETRY_AFTER_STATUS = {429, 503}
FATAL_STATUS = {401, 403, 404}  # bad key, no access, unknown model or URL: no request can work
NO_KEY = "none"  # local servers want some key string; they ignore its value


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


def status_error(exc: openai.APIStatusError) -> BackendError:
    status = exc.status_code
    retry_after = parse_retry_after(exc.response.headers) if status in RETRY_AFTER_STATUS else None
    return BackendError(
        f"HTTP {status}: {exc.message}",
        retryable=status in RETRYABLE_STATUS or status >= 500,
        fatal=status in FATAL_STATUS,
        retry_after=retry_after,
        throttled=status == 429,
    )


def transport_failure(exc: BaseException) -> str:
    """Say what really went wrong below the SDK: the aiohttp transport reports a refused
    connection as a connect *timeout*, so the original exception decides."""
    root = exc
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    if isinstance(root, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    return f"connection error: {root or type(root).__name__}"


class OpenAIBackend:
    kind = "openai"
    rate_limited = True

    def __init__(self, endpoint: ModelEndpoint) -> None:
        key = api_key(endpoint)
        self.secrets = (key,) if key != NO_KEY else ()
        self.base_url = endpoint.base_url
        self.model = endpoint.model
        # aiohttp as the SDK's transport (the SDK's documented choice "for improved
        # concurrency performance"): httpx's own pool scans and probes every connection
        # each time it hands one out, which at 64 connections cost more CPU than the
        # rest of a request. One connection per request allowed in flight, kept alive.
        connections = endpoint.limits.concurrency
        http = openai.DefaultAioHttpClient(
            limits=httpx2.Limits(
                max_connections=connections, max_keepalive_connections=connections
            ),
            timeout=endpoint.limits.timeout,
        )
        self.client = openai.AsyncOpenAI(
            api_key=key,
            base_url=endpoint.base_url,
            timeout=endpoint.limits.timeout,
            max_retries=0,
            default_headers=endpoint.headers or None,
            http_client=http,
        )

    def _arguments(self, request: Request) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": request.model or self.model,
            "messages": list(request.messages),
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "stop": list(request.stop) if request.stop else None,
            "seed": request.seed,
        }
        return {k: v for k, v in args.items() if v is not None}

    async def generate(self, request: Request) -> Completion:
        started = time.monotonic()
        try:
            # `post` is the SDK's documented way to send a body as is: same auth, headers,
            # timeouts and status errors as `chat.completions.create`, without its
            # per-request transform of the arguments and pydantic parse of the reply,
            # which cost more CPU than everything else here (see bench/llm_throughput.py).
            response = await self.client.post(
                "/chat/completions", body=self._arguments(request), cast_to=httpx2.Response
            )
            reply = json.loads(response.content)
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            raise BackendError(transport_failure(exc), retryable=True) from None
        except openai.APIStatusError as exc:
            raise status_error(exc) from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            raise BackendError(f"malformed response: {exc}", retryable=True) from None
        try:
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(
                "malformed response: no choices[0].message", retryable=True
            ) from None
        usage = reply.get("usage") or {}
        return Completion(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            latency=time.monotonic() - started,
            backend=self.kind,
            model=reply.get("model") or request.model or self.model,
        )

    async def aclose(self) -> None:
        await self.client.close()

"""The OpenAI-compatible backend: `/v1/chat/completions` through the `openai` async client.

Serves OpenAI, Gemini's and Anthropic's OpenAI-compatible endpoints, DeepInfra, Together,
Mistral and self-hosted vLLM, SGLang, Ollama and llama.cpp servers. The SDK's own retries
are off (`max_retries=0`): the client's retry loop is the only one. Each SDK error is
turned into a BackendError saying whether another attempt is worth it.
"""

from __future__ import annotations

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


class OpenAIBackend:
    kind = "openai"
    rate_limited = True

    def __init__(self, endpoint: ModelEndpoint) -> None:
        key = api_key(endpoint)
        self.secrets = (key,) if key != NO_KEY else ()
        self.base_url = endpoint.base_url
        self.model = endpoint.model
        conns = endpoint.limits.concurrency
        # The SDK keeps at most 100 idle connections; above that concurrency every request
        # would open a new one. Keep one per allowed request in flight.
        http = openai.DefaultAsyncHttpxClient(
            limits=httpx2.Limits(
                max_connections=max(conns, 100), max_keepalive_connections=max(conns, 100)
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
            response = await self.client.chat.completions.create(**self._arguments(request))
        except openai.APITimeoutError:
            raise BackendError("timed out", retryable=True) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise BackendError(f"connection error: {cause}", retryable=True) from None
        except openai.APIStatusError as exc:
            raise status_error(exc) from None
        except (openai.APIResponseValidationError, ValueError) as exc:
            raise BackendError(f"malformed response: {exc}", retryable=True) from None
        if not getattr(response, "choices", None):
            raise BackendError("malformed response: no choices", retryable=True)
        choice = response.choices[0]
        usage = response.usage
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency=time.monotonic() - started,
            backend=self.kind,
            model=response.model or request.model or self.model,
        )

    async def aclose(self) -> None:
        await self.client.close()

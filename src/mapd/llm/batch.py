"""Requests that miss the cache, sent through a provider's batch API: submitted, polled, collected.

    results = await complete_batched(client, requests, "teach: gpt", progress=None)

`Client.complete_many` calls this for an endpoint with `batch:` set, so a stage gets the
same CallResults, in input order, as from live calls. Cache hits are answered at once; the
misses go into one or more batches (split at the provider's request and size limits).

Resumable, never paid twice: every batch is recorded in the call database (`batches`, and
`batch_items`: custom_id -> cache key and request) and in RUN_DIR/batches/<id>.json before it
is first polled. A run killed while it waits finds its uncollected batches there (by the
requests' cache keys, so any run sharing the cache does) and polls them instead of
submitting again. For the moment between the provider creating a batch and the database
recording it (or a create whose reply was lost), the database notes each submission (a
digest of its lines, and its items in `batch_items` under that digest) before creating it.
A later run looks for the batch of every noted submission that holds any of its requests
before it submits anything, so a run that splits its requests otherwise (another budget or
`limits.batch_tokens`) still sends none twice. An OpenAI batch carries that digest in its
metadata, and a submission first looks for one among the newest batches. Anthropic's batches
carry no metadata: after a noted submission that was never recorded, the one unrecorded batch
with as many requests created since the note is taken for it, when no other noted submission
has that size (else a new batch is made: two teachers' batches of the same questions cannot
be told apart). A wrong guess costs a wait, not a wrong answer: the custom_ids are the
requests' cache keys, so a batch whose results answer none of them is disowned (no ledger
rows, no attempt counted) and its items go into a new batch. A batch's replies go into the
response cache and the ledger (as batch calls, at `price.batch_discount` of the live price)
in the same transaction that marks it collected, so a re-run, live or batch, sends nothing.

Budget: a submitted batch is paid whatever happens, so only the items whose worst case
(prompt estimate plus max_tokens of output, at the batch price) fits the budget go in, each
holding that much until its batch is collected; the rest are not sent (BudgetExceeded).

Failures: the items of the error file that a new batch may answer (5xx, 408/409/429, a
timeout) and the unfinished items of an expired or cancelled batch go into a new batch, up to
`limits.max_attempts` submissions per item; an item that still fails, or fails for good
(say HTTP 400), is returned with the provider's error, never dropped. The items of a batch
stopped with `mapd batches --cancel` are not resubmitted until the next run: the user
cancelled to stop paying.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from mapd.llm import limits
from mapd.llm.batch_api import QUEUE_FULL, QUEUE_FULL_HINT, BatchState, ItemError, Outcome
from mapd.llm.cache import ResponseCache, cacheable
from mapd.llm.client import BUDGET_REACHED, FINAL_EMPTY, estimate_tokens
from mapd.llm.ledger import CallRecord, call_cost, call_row
from mapd.llm.limits import retry_delay
from mapd.llm.progress import BatchProgress
from mapd.llm.store import Row
from mapd.llm.types import BackendError, CallResult, Completion, Request
from mapd.rundir import write_json

if TYPE_CHECKING:
    from mapd.llm.client import Client

T = TypeVar("T")
PROCESS_STARTED = time.time()  # a cancel asked later stopped this run's wait
CANCELLED_BY_USER = "cancelled with `mapd batches --cancel` while this run waited"


class BatchGone(Exception):
    """The provider answers 404 for a recorded batch."""


@dataclass
class Item:
    """One distinct request (by cache key) of a `complete_batched` call, and how it ended."""

    key: str
    canonical: str
    request: Request  # resolved: every field filled from the endpoint
    attempts: int = 0  # submissions so far
    batch: str | None = None  # the batch it waits in
    completion: Completion | None = None
    error: str | None = None
    skipped: bool = False  # never submitted: budget spent or endpoint down
    held: tuple[float, int] = (0.0, 0)  # budget (USD, tokens) held while it waits in a batch

    @property
    def finished(self) -> bool:
        return self.completion is not None or self.error is not None


@dataclass
class Submitted:
    """A batch being waited for: its id, when it was submitted (epoch seconds) and, per
    custom_id, the cache key, canonical request and attempt number of its item."""

    id: str
    submitted: float
    items: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    submission: str = ""  # the digest of its lines (see `BatchRun.submit_once`)


def custom_id(key: str) -> str:
    """The cache key's 64 hex digits: unique in a batch, within Anthropic's 64 characters,
    and the same for the same request in every run."""
    return key.removeprefix("sha256:")


def digest(lines: list[bytes]) -> str:
    """A submission's name: the same lines give the same name in every run."""
    return hashlib.sha256(b"".join(lines)).hexdigest()[:32]


def queue_refused(exc: BackendError) -> bool:
    """Whether a create was refused because the enqueued-token queue is full."""
    return QUEUE_FULL in exc.message or "enqueued token limit" in exc.message.lower()


def split_lines(lines: list[tuple[Item, bytes]], max_requests: int, max_bytes: int):
    """Consecutive chunks within the provider's limits of requests and bytes per batch."""
    chunks: list[list[tuple[Item, bytes]]] = []
    current: list[tuple[Item, bytes]] = []
    size = 0
    for item, line in lines:
        # 2 bytes per line for separators, 64 for Anthropic's wrapping object
        if current and (len(current) == max_requests or size + len(line) + 2 > max_bytes - 64):
            chunks.append(current)
            current, size = [], 0
        current.append((item, line))
        size += len(line) + 2
    if current:
        chunks.append(current)
    return chunks


def since(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class BatchRun:
    """One `complete_batched` call: its items, the batches they wait in, the progress."""

    def __init__(self, client: Client, desc: str, progress: bool | None) -> None:
        self.client, self.api = client, client.batch_api
        self.desc, self.progress = desc, progress
        self.items: dict[str, Item] = {}
        self.bar: BatchProgress | None = None

    async def run(self, requests: Sequence[Request]) -> list[CallResult]:
        client = self.client
        prepared = [client.prepare(r) for r in requests]
        hits: dict[str, Completion] = {}
        rows: list[Row] = []
        with BatchProgress(self.desc, len(requests), self.progress) as self.bar:
            for req, key, canonical in prepared:
                if key in self.items or key in hits:
                    continue
                hit = client.cache.get(key) if client.cache and client.cache_mode == "use" else None
                if hit is None:
                    self.items[key] = Item(key, canonical, req)
                    continue
                hits[key] = hit
                rows.append(client._ledger_row(req, key, hit, 0.0, None, 0))
            await client._write(*rows)  # one transaction for every cache hit
            for _ in range(len(requests) - len(self.items)):
                self.bar.advance(cached=True, failed=False, tokens=0, cost=0.0)
            await self.finish()
        results = []
        for request, (_, key, _) in zip(requests, prepared, strict=True):
            if key in hits:
                results.append(CallResult(request, hits[key]))
                continue
            item = self.items[key]
            error = None if item.completion else item.error
            results.append(CallResult(request, item.completion, error, item.attempts, item.skipped))
        return results

    async def finish(self) -> None:
        """Follow the batches that already hold some items, submit the rest, and resubmit
        failed items until every item has a reply or a final error."""
        waiting = self.resume()
        waiting.update(await self.resume_noted())
        while True:
            todo = [i for i in self.items.values() if not i.finished and i.batch is None]
            if todo:
                waiting.update(await self.submit(todo))
            if not waiting:
                if all(i.finished for i in self.items.values()):
                    return
                continue  # items held back by limits.batch_tokens
            try:
                await asyncio.gather(*(self.follow(b) for b in waiting.values()))
            except asyncio.CancelledError:  # Ctrl-C: the batches go on (and are billed)
                self.say_still_running([b for b in waiting.values() if self.waiting_in(b)])
                raise
            waiting = {}

    def say_still_running(self, batches: list[Submitted]) -> None:
        """Tell someone who stopped the wait that the provider still runs these batches,
        how to collect them and how to stop them."""
        if not batches:
            return
        run_dir = self.client.run_dir or "RUN_DIR"
        ids = ", ".join(b.id for b in batches)
        print(
            f"{self.desc}: batch {ids} goes on at the provider; run the same command again to "
            f"collect it (not paid twice), or cancel it: mapd batches {run_dir} --cancel",
            file=sys.stderr,
            flush=True,
        )

    def resume(self) -> dict[str, Submitted]:
        """The uncollected batches of this provider and URL that hold any of our requests."""
        store = self.client.store
        if store is None:
            return {}
        rows = store.db.execute(
            "SELECT i.batch, b.submitted, i.custom_id, i.key, i.request, i.attempt"
            " FROM batch_items i JOIN batches b ON b.id = i.batch"
            " WHERE b.collected = 0 AND b.kind = ? AND b.base_url = ?",
            (self.api.kind, self.api.base),
        ).fetchall()
        found: dict[str, Submitted] = {}
        for batch, submitted, cid, key, canonical, attempt in rows:
            found.setdefault(batch, Submitted(batch, submitted)).items[cid] = (
                key,
                canonical,
                attempt,
            )
        waiting = {}
        for b in found.values():
            for key, _, attempt in b.items.values():
                if key in self.items:
                    self.items[key].batch, self.items[key].attempts = b.id, attempt
                    waiting[b.id] = b
        return waiting

    async def resume_noted(self) -> dict[str, Submitted]:
        """The batches of noted submissions never recorded (a run killed between the create
        and the record) that hold any of our requests, whatever chunks this run would make:
        found at the provider as `unrecorded` finds them, and recorded. A note whose batch
        is not found is dropped (its items are submitted anew); one that cannot be looked
        for fails its items for this run rather than pay for them twice."""
        store = self.client.store
        if store is None:
            return {}
        rows = store.db.execute(
            "SELECT n.submission, n.started, i.custom_id, i.key, i.request, i.attempt"
            " FROM batch_intents n JOIN batch_items i ON i.batch = n.submission"
            " WHERE n.kind = ? AND n.base_url = ?",
            (self.api.kind, self.api.base),
        ).fetchall()
        noted: dict[str, Submitted] = {}
        for submission, started, cid, key, canonical, attempt in rows:
            b = noted.setdefault(submission, Submitted("", started, submission=submission))
            b.items[cid] = (key, canonical, attempt)
        waiting = {}
        for b in noted.values():
            ours = [
                (self.items[key], attempt)
                for key, _, attempt in b.items.values()
                if key in self.items
            ]
            if not ours:
                continue
            try:
                state = await self.retrying(
                    lambda b=b: self.unrecorded(b.submission, len(b.items), b.submitted)
                )
            except BackendError as exc:
                self.fail([item for item, _ in ours], exc.message, skipped=True)
                continue
            if state is None:
                await self.drop_note(b.submission)
                continue
            b.id = state.id
            for item, attempt in ours:
                item.batch, item.attempts = b.id, attempt
            await self.record(b, state)
            waiting[b.id] = b
        return waiting

    async def submit(self, todo: list[Item]) -> dict[str, Submitted]:
        client = self.client
        if reason := client._blocked():
            self.fail(todo, reason, skipped=True)
            return {}
        todo = self.within_queue(todo)
        admitted = self.within_budget(todo)
        self.fail(todo[len(admitted) :], BUDGET_REACHED, skipped=True)
        lines = [(item, self.api.line(custom_id(item.key), item.request)) for item in admitted]
        waiting = {}
        for chunk in split_lines(lines, self.api.max_requests, self.api.max_bytes):
            entries = {custom_id(i.key): (i.key, i.canonical, i.attempts + 1) for i, _ in chunk}
            try:
                submission = digest([line for _, line in chunk])
                state = await self.submit_once([line for _, line in chunk], submission, entries)
            except BackendError as exc:
                for item, _ in chunk:
                    self.settle(item)
                if queue_refused(exc):
                    await self.refused([item for item, _ in chunk], exc.message)
                else:
                    self.fail([item for item, _ in chunk], exc.message, skipped=True)
                continue
            b = Submitted(state.id, time.time(), entries, submission)
            for item, _ in chunk:
                item.batch, item.attempts = state.id, item.attempts + 1
            await self.record(b, state)
            waiting[b.id] = b
        return waiting

    async def refused(self, items: list[Item], message: str) -> None:
        """A create refused because the provider's queue of enqueued tokens is full (Azure's
        "fail fast" regions answer HTTP 400 instead of failing the batch later). While a
        batch of ours waits, the items wait for a later round: the queue empties as ours
        finish. With none of ours waiting, others fill the queue: each refusal is an attempt,
        after a pause, and at `limits.max_attempts` the items fail, saying what to set."""
        if any(i.batch is not None and not i.finished for i in self.items.values()):
            return
        attempt = max(item.attempts for item in items) + 1
        for item in items:
            item.attempts += 1
        if attempt >= self.client.endpoint.limits.max_attempts:
            self.fail(items, self.client.scrub(message) + QUEUE_FULL_HINT)
            return
        await limits.backoff_sleep(retry_delay(attempt, None))

    def within_queue(self, todo: list[Item]) -> list[Item]:
        """The first items that fit `limits.batch_tokens` beside those already waiting in
        batches (at least one when none waits); the rest stay for a later round. A provider
        fails a whole batch that passes its enqueued-token limit."""
        limit = self.client.endpoint.limits.batch_tokens
        if limit is None:
            return todo
        waiting = [i for i in self.items.values() if i.batch is not None and not i.finished]
        room = limit - sum(estimate_tokens(i.request) for i in waiting)
        taken: list[Item] = []
        for item in todo:
            room -= estimate_tokens(item.request)
            if room < 0 and (taken or waiting):
                break
            taken.append(item)
        return taken

    def within_budget(self, todo: list[Item]) -> list[Item]:
        """The first items whose worst case (prompt estimate plus max_tokens of output, at
        the batch price) fits the budget, each holding that much of it until its batch is
        collected: a submitted batch is paid whatever happens, so the cap is kept before
        submitting, not after collecting."""
        client, budget = self.client, self.client.budget
        if budget is None or not client._counts_budget():
            return todo
        admitted = []
        for item in todo:
            output = item.request.max_tokens or 0
            tokens = estimate_tokens(item.request)
            usd = call_cost(client.endpoint.price, tokens - output, output, True)
            if budget.would_exceed(usd, tokens):
                break
            budget.hold(usd, tokens)
            item.held = (usd, tokens)
            admitted.append(item)
        return admitted

    def settle(self, item: Item, usd: float = 0.0, tokens: int = 0) -> None:
        """Charge the budget what the item cost, in place of what it held."""
        if self.client.budget is not None and self.client._counts_budget():
            self.client.budget.settle(item.held, usd, tokens)
        item.held = (0.0, 0)

    async def submit_once(
        self, lines: list[bytes], submission: str, items: dict[str, tuple[str, str, int]]
    ) -> BatchState:
        """Create a batch for `lines`, unless the provider already holds one made for them
        that this database has not recorded (see `unrecorded`). The look comes before every
        attempt: a create whose reply was lost may have made the batch. The submission and
        its `items` (as `Submitted.items`) are noted before its first create and the note
        dropped when the batch is recorded or the create refused (no batch was made)."""
        client = self.client
        tag = f"{client.stage or 'mapd'}-{client.name}"
        since = self.noted_at(submission)  # an earlier run's create may have made it

        async def find_or_create() -> BatchState:
            nonlocal since
            found = await self.unrecorded(submission, len(lines), since)
            if found is not None:
                return found
            if since is None:
                since = time.time()
                await self.write_note(submission, items, since)
            try:
                return await self.api.submit(lines, tag, submission)
            except BackendError as exc:
                if not exc.retryable:  # refused: the provider made no batch
                    await self.drop_note(submission)
                raise

        return await self.retrying(find_or_create)

    def noted_at(self, submission: str) -> float | None:
        """When an earlier try noted `submission` without recording its batch, if it did."""
        store = self.client.store
        if store is None:
            return None
        sql = "SELECT started FROM batch_intents WHERE submission = ?"
        row = store.db.execute(sql, (submission,)).fetchone()
        return None if row is None else row[0]

    async def write_note(
        self, submission: str, items: dict[str, tuple[str, str, int]], started: float
    ) -> None:
        """Note a submission about to be created, and its items: filed in `batch_items` under
        the submission's digest (no batch id yet) until its batch is recorded."""
        rows: list[Row] = [
            (
                "INSERT OR IGNORE INTO batch_intents VALUES (?, ?, ?, ?, ?)",
                (submission, self.api.kind, self.api.base, len(items), started),
            )
        ]
        rows += [
            ("INSERT OR REPLACE INTO batch_items VALUES (?, ?, ?, ?, ?)", (submission, cid, *entry))
            for cid, entry in items.items()
        ]
        await self.client._write(*rows)

    async def drop_note(self, submission: str) -> None:
        await self.client._write(*self.note_dropped(submission))

    @staticmethod
    def note_dropped(submission: str) -> list[Row]:
        return [
            ("DELETE FROM batch_intents WHERE submission = ?", (submission,)),
            ("DELETE FROM batch_items WHERE batch = ?", (submission,)),
        ]

    async def unrecorded(
        self, submission: str, requests: int, since: float | None
    ) -> BatchState | None:
        """The provider's batch for these lines that the database does not know, if any.
        OpenAI's is found by its metadata. Anthropic's is a guess by size and time, taken
        only when it cannot be another's: exactly one such batch, and exactly one noted,
        unrecorded submission of that size for this provider (two teachers killed while
        submitting the same questions would otherwise swap batches); else a new batch."""
        store = self.client.store
        if store is None:
            return None
        found = [
            state
            for state in await self.api.find(submission, requests, since)
            if store.db.execute("SELECT 1 FROM batches WHERE id = ?", (state.id,)).fetchone()
            is None
        ]
        if self.api.finds_exactly:
            return found[0] if found else None
        notes = store.db.execute(
            "SELECT COUNT(*) FROM batch_intents WHERE kind = ? AND base_url = ? AND requests = ?",
            (self.api.kind, self.api.base, requests),
        ).fetchone()[0]
        return found[0] if len(found) == 1 and notes == 1 else None

    async def record(self, b: Submitted, state: BatchState) -> None:
        """Write the batch and its custom_id -> cache key map before it is first polled."""
        client = self.client
        rows: list[Row] = [
            (
                "INSERT OR REPLACE INTO batches (id, run, stage, endpoint, kind, base_url, status,"
                " requests, done, failed, submitted, updated, collected)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (
                    b.id,
                    client.run,
                    client.stage,
                    client.name,
                    self.api.kind,
                    self.api.base,
                    state.status,
                    len(b.items),
                    state.done,
                    state.failed,
                    b.submitted,
                    b.submitted,
                ),
            )
        ]
        rows += [
            ("INSERT OR REPLACE INTO batch_items VALUES (?, ?, ?, ?, ?)", (b.id, cid, *entry))
            for cid, entry in b.items.items()
        ]
        if b.submission:
            rows += self.note_dropped(b.submission)
        await client._write(*rows)
        if client.run_dir is not None:
            write_json(
                client.run_dir / "batches" / f"{b.id}.json",
                {
                    "id": b.id,
                    "endpoint": client.name,
                    "kind": self.api.kind,
                    "base_url": self.api.base,
                    "stage": client.stage,
                    "submitted": b.submitted,
                    "requests": len(b.items),
                    "custom_ids": {cid: key for cid, (key, _, _) in b.items.items()},
                },
            )

    async def follow(self, b: Submitted) -> None:
        """Poll one batch until it ends, showing its status, then collect its results."""
        client = self.client
        line = BatchProgress(f"{self.desc} {b.id}", len(b.items), self.progress)
        with line:
            while True:
                try:
                    state = await self.retrying(lambda: self.api.status(b.id), b.id)
                except BatchGone:
                    await self.forget(b)
                    return
                except BackendError as exc:
                    self.fail(self.waiting_in(b), exc.message)
                    return
                await client._write(self.status_row(state))
                line.show(state.done, state.status, self.note(state, b))
                if state.ended:
                    break
                await asyncio.sleep(client.endpoint.limits.poll_interval)
            try:
                latency = time.time() - b.submitted
                outcomes = await self.retrying(lambda: self.api.results(state, latency))
            except BackendError as exc:
                self.fail(self.waiting_in(b), exc.message)
                return
        if outcomes and not outcomes.keys() & b.items.keys():
            await self.disown(b)
            return
        await self.collect(b, state, outcomes)

    async def disown(self, b: Submitted) -> None:
        """A batch guessed to be ours (see `unrecorded`) whose results answer none of our
        requests: another's. Nothing of it goes into the ledger; its items go into a new
        batch, the guess not counted as an attempt."""
        for item in self.waiting_in(b):
            self.settle(item)
            item.batch, item.attempts = None, item.attempts - 1
        await self.client._write(
            ("UPDATE batches SET status = 'not ours', collected = 1 WHERE id = ?", (b.id,))
        )

    @staticmethod
    def note(state: BatchState, b: Submitted) -> str:
        counts = f" {state.done}/{state.total}" if state.total else ""
        failed = f", {state.failed} failed" if state.failed else ""
        return (
            f"{state.status}{counts}{failed} · {since(time.time() - b.submitted)} since submission"
        )

    def status_row(self, state: BatchState, collected: bool = False) -> Row:
        return (
            "UPDATE batches SET status = ?, done = ?, failed = ?, updated = ?,"
            " collected = MAX(collected, ?) WHERE id = ?",
            (state.status, state.done, state.failed, time.time(), int(collected), state.id),
        )

    async def collect(self, b: Submitted, state: BatchState, outcomes: dict[str, Outcome]) -> None:
        """Every item's reply or error into the ledger (and replies into the cache), in one
        transaction with the mark that the batch is collected."""
        client = self.client
        # the user stopped this batch with `mapd batches --cancel`: its unfinished items wait
        # for the next run instead of going into a new batch at once
        cancelled = self.cancel_asked(b.id)
        max_attempts = 0 if cancelled else client.endpoint.limits.max_attempts
        rows: list[Row] = []
        for cid, (key, canonical, attempt) in b.items.items():
            outcome = outcomes.get(cid) or ItemError(
                state.error or "no result for this request in the batch's files",
                retryable=state.error is None or state.queue_full,
            )
            completion = outcome if isinstance(outcome, Completion) else None
            cost, error, retryable = 0.0, None, False
            if isinstance(outcome, ItemError):
                error, retryable = client.scrub(outcome.message), outcome.retryable
            elif completion is not None:
                price = client.endpoint.price
                cost = call_cost(
                    price, completion.prompt_tokens, completion.completion_tokens, True
                )
                if not completion.text.strip():
                    error = f"empty reply (finish reason {completion.finish_reason})"
                    retryable = completion.finish_reason not in FINAL_EMPTY
            item = self.items.get(key)
            model = item.request.model if item else None
            tokens = completion.tokens if completion else 0
            if item is not None and item.batch == b.id:
                self.settle(item, cost, tokens)
            elif client.budget is not None and client._counts_budget():
                client.budget.charge(cost, tokens)
            rows.append(self.ledger_row(key, model, completion, cost, error, attempt, b.id))
            if error is None and client.cache is not None and cacheable(completion):  # type: ignore[arg-type]
                rows.append(ResponseCache.row(key, canonical, completion))  # type: ignore[arg-type]
            if item is None or item.batch != b.id or item.finished:
                continue
            if error is None:
                item.completion = completion
                self.advance(item, cost)
            elif retryable and attempt < max_attempts:
                item.batch = None  # into the next batch
            else:
                self.fail([item], f"{CANCELLED_BY_USER}: {error}" if cancelled else error)
        rows.append(self.status_row(state, collected=True))
        await client._write(*rows)

    def cancel_asked(self, batch: str) -> bool:
        """Whether `mapd batches --cancel` stopped this batch (from another process) while this
        process ran. A cancel asked before it began was the user's stop between runs: this
        run is the next one, and resubmits."""
        if self.client.store is None:
            return False
        sql = "SELECT cancel_asked FROM batches WHERE id = ?"
        row = self.client.store.db.execute(sql, (batch,)).fetchone()
        return bool(row and row[0] > PROCESS_STARTED)

    def ledger_row(
        self,
        key: str,
        model: str | None,
        completion: Completion | None,
        cost: float,
        error: str | None,
        attempt: int,
        batch: str,
    ) -> Row:
        c = self.client
        return call_row(
            CallRecord(
                c.run,
                c.stage,
                c.name,
                c.backend.kind,
                model or c.endpoint.model,
                key,
                completion,
                cost,
                error,
                attempt,
                batch,
            )
        )

    def waiting_in(self, b: Submitted) -> list[Item]:
        return [i for i in self.items.values() if i.batch == b.id and not i.finished]

    def fail(self, items: list[Item], error: str, skipped: bool = False) -> None:
        for item in items:
            item.error, item.skipped = error, skipped and item.attempts == 0
            self.advance(item, 0.0)

    def advance(self, item: Item, cost: float) -> None:
        if self.bar is not None:
            c = item.completion
            self.bar.advance(cached=False, failed=c is None, tokens=c.tokens if c else 0, cost=cost)

    async def forget(self, b: Submitted) -> None:
        """A recorded batch the provider no longer knows (another account's key, or deleted):
        marked collected with nothing in it, and its items go into a new batch, within
        `limits.max_attempts`: a provider that answers 404 for every batch it creates would
        otherwise be paid for a new batch in a loop."""
        max_attempts = self.client.endpoint.limits.max_attempts
        for item in self.waiting_in(b):
            self.settle(item)
            if item.attempts < max_attempts:
                item.batch = None
            else:
                self.fail([item], f"batch {b.id}: the provider answers 404 (no such batch)")
        await self.client._write(
            ("UPDATE batches SET status = 'gone', collected = 1 WHERE id = ?", (b.id,))
        )

    async def retrying(self, send: Callable[[], Awaitable[T]], batch: str | None = None) -> T:
        """One call to the batch API with the endpoint's retries; an endpoint that cannot
        serve (bad key, unreachable, nothing but failures) is marked down. A 404 for the
        status of `batch` raises BatchGone: that batch is gone, not the endpoint."""
        client = self.client
        max_attempts = client.endpoint.limits.max_attempts
        for attempt in range(1, max_attempts + 1):
            if client.down:
                raise BackendError(f"endpoint {client.down}")
            try:
                return await send()
            except BackendError as exc:
                message = client.scrub(exc.message)
                if batch is not None and message.startswith("HTTP 404"):
                    raise BatchGone(batch) from None
                if exc.retryable and attempt < max_attempts:
                    await limits.backoff_sleep(retry_delay(attempt, exc.retry_after))
                    continue
                if exc.fatal or exc.retryable:
                    client.down = f"{client.name} ({self.api.base}): {message}"
                raise BackendError(message) from None
        raise AssertionError("unreachable")


async def complete_batched(
    client: Client, requests: Sequence[Request], desc: str, progress: bool | None = None
) -> list[CallResult]:
    """One CallResult per request, in input order, the misses answered through batches."""
    return await BatchRun(client, desc, progress).run(requests)

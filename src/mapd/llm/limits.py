"""Per-endpoint limits and retry timing: concurrency, requests and tokens per minute, backoff.

    limiter = EndpointLimiter(endpoint.limits)
    async with limiter.slot(estimated_tokens) as slot:
        ...send...
        slot.settle(actual_tokens)

The rate limits are token buckets holding one second's worth of requests (or tokens), so a
run never bursts a whole minute's quota at once. Retries wait `retry_delay(...)` through
`backoff_sleep`, which tests patch out.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from mapd.config import Limits

MAX_BACKOFF = 30.0  # seconds; exponential backoff is capped here
MAX_RETRY_AFTER = 600.0  # a server's Retry-After above this is not believed


async def backoff_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`: the server's wish, else backoff with jitter."""
    if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER:
        return retry_after
    base = min(0.5 * 2 ** (attempt - 1), MAX_BACKOFF)
    return base * (1 - 0.25 * random.random())


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms` (milliseconds) or `retry-after` (seconds or an HTTP date), if present."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class TokenBucket:
    """Refills at `per_minute / 60` per second up to one second's worth (at least 1)."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()  # first come, first served

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self, amount: float = 1.0) -> float:
        """Take `amount` (capped at the capacity) once available; return what was taken."""
        amount = min(amount, self.capacity)
        async with self.lock:
            self._refill()
            while self.level < amount:
                await asyncio.sleep((amount - self.level) / self.rate)
                self._refill()
            self.level -= amount
        return amount

    def adjust(self, amount: float) -> None:
        """Give back (positive) or take more (negative) once the real cost is known."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


@dataclass
class Slot:
    bucket: TokenBucket | None
    taken: float

    def settle(self, actual_tokens: int) -> None:
        if self.bucket is not None:
            self.bucket.adjust(self.taken - min(actual_tokens, self.bucket.capacity))
            self.taken = 0.0


class EndpointLimiter:
    """Concurrency, rpm and tpm for one endpoint, shared by every request sent to it."""

    def __init__(self, limits: Limits) -> None:
        self.concurrency = asyncio.Semaphore(limits.concurrency)
        self.requests = TokenBucket(limits.rpm) if limits.rpm else None
        self.tokens = TokenBucket(limits.tpm) if limits.tpm else None

    @asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[Slot]:
        # The concurrency slot first: taking a rate token and then waiting for a slot
        # would let queued requests burst past the rate when slots free up.
        async with self.concurrency:
            if self.requests is not None:
                await self.requests.acquire()
            taken = await self.tokens.acquire(estimated_tokens) if self.tokens else 0.0
            yield Slot(self.tokens, taken)

"""Retries and limits, measured on the server side; retry waits recorded, not slept."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import pytest

from mapd.config import Limits
from mapd.llm import EndpointUnavailable, Request, client_for
from mapd.llm.limits import TokenBucket, parse_retry_after, retry_delay
from mapd.testing.loopback import Fault, chat_body


def run_batch(endpoint, store, n, prompt="q"):
    async def go():
        client = client_for(endpoint, store=store, cache_mode="off")
        try:
            return await client.complete_many([Request.user(f"{prompt}{i}") for i in range(n)])
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("fault", "expected_wait"),
    [
        (Fault.error(429, retry_after="2"), 2.0),
        (Fault.error(503, retry_after="7"), 7.0),
        (Fault("error", status=429, headers={"retry-after-ms": "1500"}), 1.5),
    ],
)
def test_retry_after_is_honoured(server, store, sleeps, make_teacher, fault, expected_wait):
    server.faults.append(fault)
    (result,) = run_batch(make_teacher(), store, 1)
    assert result.ok and result.attempts == 2
    assert sleeps == [expected_wait]
    assert len(server.requests) == 2


def test_retry_after_is_ignored_on_a_500(server, store, sleeps, make_teacher):
    server.faults.append(Fault.error(500, retry_after="30"))
    (result,) = run_batch(make_teacher(), store, 1)
    assert result.ok and sleeps and sleeps[0] < 1


@pytest.mark.parametrize(
    "fault",
    [
        Fault.error(408),
        Fault.error(409),
        Fault.error(500),
        Fault.error(502),
        Fault("reset"),
        Fault("cut"),
        Fault("malformed"),
    ],
    ids=["408", "409", "500", "502", "reset", "cut", "malformed"],
)
def test_transient_faults_are_retried(server, store, sleeps, make_teacher, fault):
    server.faults.extend([fault, fault])
    (result,) = run_batch(make_teacher(), store, 1)
    assert result.ok, result.error
    assert result.attempts == 3 and len(server.requests) == 3
    assert len(sleeps) == 2


def test_a_timeout_is_retried(server, store, sleeps, make_teacher):
    server.faults.append(Fault("hang"))
    started = time.monotonic()
    (result,) = run_batch(make_teacher(timeout=0.3), store, 1)
    assert result.ok and result.attempts == 2
    assert time.monotonic() - started < 5


def test_backoff_grows_and_attempts_are_bounded(server, store, sleeps, make_teacher):
    server.reply = lambda req: Fault.error(500)
    with pytest.raises(EndpointUnavailable) as info:  # nothing ever succeeded
        run_batch(make_teacher(max_attempts=5), store, 1)
    (result,) = info.value.results
    assert not result.ok and result.attempts == 5 and len(server.requests) == 5
    assert len(sleeps) == 4
    assert sleeps == sorted(sleeps) and sleeps[-1] > 2 * sleeps[0]


def test_an_empty_reply_is_retried(server, store, sleeps, make_teacher):
    server.faults.append(Fault("empty"))
    (result,) = run_batch(make_teacher(), store, 1)
    assert result.ok and result.text and result.attempts == 2 and len(sleeps) == 1


def test_an_empty_reply_cut_by_the_token_limit_fails_without_retry(
    server, store, sleeps, make_teacher, monkeypatch
):
    body = chat_body
    monkeypatch.setattr(
        "mapd.testing.loopback.chat_body",
        lambda req, text: body(req, "").replace(b'"stop"', b'"length"'),
    )
    (result,) = run_batch(make_teacher(), store, 1)
    assert not result.ok and "empty reply: cut off at max_tokens (512)" in result.error
    assert "raise sampling.max_tokens" in result.error
    assert sleeps == [] and len(server.requests) == 1


def test_concurrency_never_exceeds_the_limit(store, make_teacher):
    from mapd.testing.loopback import LoopbackServer

    with LoopbackServer(latency=0.03) as s:
        endpoint = make_teacher(concurrency=5).model_copy(update={"base_url": s.base_url})
        results = run_batch(endpoint, store, 40)
        assert all(r.ok for r in results)
        assert s.max_in_flight == 5  # reached, never passed


def test_request_rate_never_exceeds_the_limit(server, store, make_teacher):
    rpm = 1200.0  # 20 per second, bursts of at most 20
    started = time.monotonic()
    results = run_batch(make_teacher(concurrency=50, rpm=rpm), store, 50)
    assert all(r.ok for r in results)
    t = server.arrivals
    rate, burst = rpm / 60, 20
    # A token bucket that starts full lets through at most burst + rate * s requests in the
    # first s seconds. Counted from before the client exists, not in sliding windows: a
    # client starved of CPU sends its released requests late and in bunches, which a
    # sliding window mistakes for a burst, but lateness can never push a count over this.
    for n, u in enumerate(t, start=1):
        assert n <= burst + rate * (u - started) + 1, f"{n} requests within {u - started:.2f} s"
    assert t[-1] - t[0] >= (50 - burst) / rate - 0.25  # unlimited, 50 arrive within ~0.1 s


def test_token_rate_limit_spaces_requests(server, store, make_teacher):
    # 600 tokens per minute = 10/s; each request is estimated at 10 tokens (max_tokens)
    endpoint = make_teacher(concurrency=10, tpm=600.0)
    endpoint = endpoint.model_copy(
        update={"sampling": endpoint.sampling.model_copy(update={"max_tokens": 10})}
    )
    run_batch(endpoint, store, 4)
    t = server.arrivals
    assert t[-1] - t[0] >= 2.5  # 10-token burst, then one request per second


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    later = parse_retry_after({"retry-after": formatdate(time.time() + 60, usegmt=True)})
    assert later is not None and 55 < later <= 61
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_retry_delay_prefers_the_server_and_caps_backoff():
    assert retry_delay(1, retry_after=4.0) == 4.0
    assert retry_delay(1, retry_after=100_000.0) < 1  # not believed: backoff instead
    assert 0.375 <= retry_delay(1) <= 0.5
    assert retry_delay(30) <= 30.0


def test_token_bucket_starts_full_and_refills():
    async def go():
        bucket = TokenBucket(per_minute=600)  # 10/s, capacity 10
        started = time.monotonic()
        for _ in range(10):
            await bucket.acquire()
        burst = time.monotonic() - started
        await bucket.acquire(5)
        return burst, time.monotonic() - started

    burst, total = asyncio.run(go())
    assert burst < 0.05 and 0.45 <= total < 1.0


def test_limits_defaults_are_sane():
    limits = Limits()
    assert limits.max_attempts >= 2 and limits.concurrency >= 1

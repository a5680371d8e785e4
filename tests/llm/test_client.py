"""The client: order kept, failures reported per item, endpoint down, budget, ledger."""

from __future__ import annotations

import asyncio
import time

import pytest

from mapd.config import Price
from mapd.errors import MapdError
from mapd.llm import (
    Budget,
    BudgetExceeded,
    CallFailed,
    EndpointUnavailable,
    Request,
    client_for,
    ledger_totals,
    run_id,
)
from mapd.testing.loopback import Fault, LoopbackServer


def run_batch(endpoint, store, requests, **kwargs):
    async def go():
        client = client_for(endpoint, store=store, **kwargs)
        try:
            return await client.complete_many(requests)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_results_keep_input_order_when_replies_finish_out_of_order(store, make_teacher):
    with LoopbackServer(
        latency=lambda req: 0.002 * (30 - int(req["messages"][-1]["content"]))
    ) as s:
        endpoint = make_teacher().model_copy(update={"base_url": s.base_url})
        requests = [Request.user(str(i), tag=f"q{i}") for i in range(30)]
        results = run_batch(endpoint, store, requests)
    assert [r.request.tag for r in results] == [f"q{i}" for i in range(30)]
    assert [r.text for r in results] == [f"[fake-model] reply to: {i}" for i in range(30)]
    # the server really answered out of order: the last prompt came back first
    assert all(r.ok and r.attempts == 1 for r in results)


def test_endpoint_defaults_fill_the_request(server, store, make_teacher):
    endpoint = make_teacher().model_copy(update={"system_prompt": "Be brief."})
    run_batch(endpoint, store, [Request.user("hi", max_tokens=7)])
    sent = server.requests[0]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["temperature"] == endpoint.sampling.temperature
    assert sent["max_tokens"] == 7
    assert sent["model"] == "fake-model"


def test_a_failing_item_is_reported_and_the_rest_succeed(server, store, sleeps, make_teacher):
    def reply(req):
        if req["messages"][-1]["content"] == "bad":
            return Fault.error(500)
        return "fine"

    server.reply = reply
    requests = [Request.user(p) for p in ["a", "bad", "c"]]
    results = run_batch(make_teacher(max_attempts=3), store, requests)
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].attempts == 3
    assert "HTTP 500" in results[1].error
    with pytest.raises(ValueError, match="call failed"):
        _ = results[1].text
    assert len(sleeps) == 2


def test_client_error_is_not_retried(server, store, sleeps, make_teacher):
    server.faults.append(Fault.error(400))
    (result,) = run_batch(make_teacher(), store, [Request.user("x")])
    assert not result.ok and result.attempts == 1 and "HTTP 400" in result.error
    assert sleeps == []


def test_complete_raises_a_user_error_on_failure(server, store, sleeps, make_teacher):
    server.reply = lambda req: Fault.error(400)

    async def go():
        client = client_for(make_teacher(), store=store)
        try:
            with pytest.raises(CallFailed, match="HTTP 400"):
                await client.complete(Request.user("x"))
            server.reply = lambda req: "ok now"
            return await client.complete(Request.user("y"))
        finally:
            await client.aclose()

    assert asyncio.run(go()).text == "ok now"


def test_an_endpoint_that_is_down_stops_after_bounded_retries(store, sleeps, make_teacher):
    with LoopbackServer() as s:
        dead_url = s.base_url  # the port is closed once the server stops
    endpoint = make_teacher(max_attempts=3, concurrency=2).model_copy(update={"base_url": dead_url})
    started = time.monotonic()
    with pytest.raises(EndpointUnavailable) as info:
        run_batch(endpoint, store, [Request.user(str(i)) for i in range(50)])
    assert time.monotonic() - started < 10
    err = info.value
    assert "connection error" in err.message and "t (" in err.message
    assert "0 of 50 calls done" in err.message
    assert len(err.results) == 50 and not any(r.ok for r in err.results)
    # the breaker opens after concurrency x max_attempts failures in a row; an attempt
    # already in flight then may fail too; every other item is never sent
    assert sum(r.attempts for r in err.results) <= 2 * 3 + 1
    assert sum(r.skipped for r in err.results) >= 50 - (2 * 3 + 1)


@pytest.mark.parametrize(
    "status, fix",
    [(401, "check the key in the endpoint's api_key_env"), (404, "most servers' ends in /v1")],
)
def test_a_bad_key_or_url_fails_the_endpoint_fast(server, store, sleeps, make_teacher, status, fix):
    server.reply = lambda req: Fault.error(status)
    with pytest.raises(EndpointUnavailable, match=f"HTTP {status}") as info:
        run_batch(make_teacher(concurrency=1), store, [Request.user(str(i)) for i in range(20)])
    assert len(server.requests) == 1
    assert fix in info.value.hint, info.value.hint


def test_budget_stops_new_requests_and_cached_work_is_free(server, store, make_teacher, tmp_path):
    price = Price(input_per_mtok=1e6, output_per_mtok=0)  # $1 per prompt token
    endpoint = make_teacher(price=price, concurrency=1)
    requests = [Request.user(f"question {i}") for i in range(10)]  # 2 prompt tokens each
    run = run_id(tmp_path / "budget")
    with pytest.raises(BudgetExceeded) as info:
        run_batch(endpoint, store, requests, run=run, budget=Budget(usd=5.0))
    err = info.value
    assert "3 of 10 calls done, 7 not sent" in err.message
    assert "raise budget.usd" in err.hint
    assert [r.ok for r in err.results] == [True] * 3 + [False] * 7
    assert len(server.requests) == 3

    # A larger budget, counting what the run already spent: the 3 done come from the cache.
    from mapd.config import BudgetConfig

    budget = Budget.for_run(BudgetConfig(usd=100.0), store, run)
    assert budget.spent_usd == pytest.approx(6.0)
    results = run_batch(endpoint, store, requests, run=run, budget=budget)
    assert all(r.ok for r in results)
    assert len(server.requests) == 10
    assert sum(r.completion.cached for r in results) == 3
    assert budget.spent_usd == pytest.approx(20.0)


def test_ledger_totals_per_stage_and_endpoint(server, store, make_teacher, tmp_path):
    endpoint = make_teacher(price=Price(input_per_mtok=2.0, output_per_mtok=4.0))
    run = run_id(tmp_path / "run")
    requests = [Request.user("one two three")] * 2 + [Request.user("four")]
    run_batch(endpoint, store, requests, run=run, stage="teach")
    run_batch(endpoint, store, requests, run=run, stage="review")
    teach, review = ledger_totals(store, tmp_path / "run")
    assert (teach.stage, teach.endpoint, teach.calls) == ("teach", "t", 3)
    assert teach.cached == 1  # the repeated request is served from the cache
    assert review.cached == 3 and review.cost == 0
    assert teach.prompt_tokens == 3 + 3 + 1  # cached calls count their tokens too
    # paid: "one two three" (3 prompt, 6 reply words) and "four" (1 prompt, 4 reply words)
    assert teach.cost == pytest.approx(((3 + 1) * 2.0 + (6 + 4) * 4.0) / 1e6)
    with pytest.raises(MapdError, match="no calls recorded") as err:
        ledger_totals(store, tmp_path / "other")
    assert str(store.path) in err.value.message and "MAPD_HOME" in err.value.hint


def test_a_run_keeps_its_ledger_when_moved_and_a_new_run_at_an_old_path_starts_afresh(
    server, store, make_teacher, tmp_path
):
    first = tmp_path / "run"
    run_batch(make_teacher(), store, [Request.user("q1")], run=run_id(first), stage="teach")
    moved = first.rename(tmp_path / "moved")
    assert [row.calls for row in ledger_totals(store, moved)] == [1]
    fresh = tmp_path / "run"  # a new run where the first one used to be
    with pytest.raises(MapdError, match="no calls recorded"):
        ledger_totals(store, fresh)
    assert not fresh.exists()  # looking did not make a folder
    assert run_id(fresh) != run_id(moved)


def test_a_timed_out_body_is_not_sent_again_while_a_concurrent_server_still_works_on_it(
    store, sleeps, make_teacher
):
    """A server that answers many requests at once spends 1.2 s on its first copy of
    "slow", past the 0.8 s timeout, while the requests sent after it are answered at once.
    Those answers say nothing of "slow": it is not sent again before its first copy ends."""
    first_copy = 1.2
    copies: dict[str, int] = {}

    def latency(request):
        body = request["messages"][-1]["content"]
        copies[body] = copies.get(body, 0) + 1
        return first_copy if body == "slow" and copies[body] == 1 else 0.05

    with LoopbackServer(latency=latency) as s:
        limits = {"concurrency": 2, "max_attempts": 3, "timeout": 0.8}
        endpoint = make_teacher(**limits).model_copy(update={"base_url": s.base_url})
        prompts = ["slow"] + [f"quick {i}" for i in range(10)]
        results = run_batch(endpoint, store, [Request.user(p) for p in prompts])
    assert all(r.ok for r in results) and results[0].timeouts == 1
    bodies = [r["messages"][-1]["content"] for r in s.requests]
    slow = [at for body, at in zip(bodies, s.arrivals, strict=True) if body == "slow"]
    assert len(slow) == 2
    assert slow[1] >= slow[0] + first_copy, "sent again while the first copy still ran"

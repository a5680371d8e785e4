"""Batch endpoints through the loopback batch server: results, resubmission, split, cost, re-runs."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest
from aiohttp import web

from mapd.config import Limits, ModelEndpoint, Price, Sampling
from mapd.llm import Request, client_for
from mapd.llm.batch_api import OpenAIBatches, anthropic_params
from mapd.llm.ledger import call_cost
from mapd.llm.store import open_store
from mapd.testing.batch_server import BatchServer
from mapd.testing.loopback import LoopbackServer

PRICE = Price(input_per_mtok=3.0, output_per_mtok=15.0)


@pytest.fixture
def batch_server():
    with BatchServer() as server:
        yield server


def endpoint(base_url: str, batch: bool | str = True, system: str | None = None, **limits):
    return ModelEndpoint(
        name="t",
        model="fake-model",
        base_url=base_url,
        batch=batch,
        system_prompt=system,
        price=PRICE,
        limits=Limits(poll_interval=0.001, **limits),
    )


def complete(ep, store, requests, run_dir=None):
    async def go():
        client = client_for(ep, store=store, run="run-1", stage="teach", run_dir=run_dir)
        try:
            return await client.complete_many(requests, progress=False)
        finally:
            await client.aclose()

    return asyncio.run(go())


def prompts(n: int) -> list[Request]:
    return [Request.user(f"question {i}", tag=f"q{i}") for i in range(n)]


@pytest.mark.parametrize("kind", [True, "anthropic"])
def test_batch_results_match_live_results_in_input_order(kind, batch_server, store, tmp_path):
    with LoopbackServer() as live:
        live_results = complete(endpoint(live.base_url, False, "Be brief."), store, prompts(12))
    ep = endpoint(batch_server.base_url, kind, "Be brief.")
    results = complete(ep, store, prompts(12), tmp_path)
    if kind is True:  # every batch line's body is the body the live path sends
        (batch,) = batch_server.batches.values()
        assert sorted(map(json.dumps, live.requests)) == sorted(
            json.dumps(body) for _, body, _ in batch.items
        )
    assert [r.request.tag for r in results] == [f"q{i}" for i in range(12)]
    assert [r.text for r in results] == [r.text for r in live_results]
    assert all(r.ok and r.attempts == 1 and not r.completion.cached for r in results)
    assert len(batch_server.batches) == 1
    # recorded in the run folder and the database before polling: custom_id -> cache key
    (saved,) = (tmp_path / "batches").glob("*.json")
    record = json.loads(saved.read_text())
    assert set(record["custom_ids"].values()) == {
        k for (k,) in store.db.execute("SELECT key FROM batch_items")
    }
    assert store.db.execute("SELECT collected FROM batches").fetchone() == (1,)


def test_anthropic_params_move_the_system_prompt_and_require_max_tokens():
    ep = ModelEndpoint(name="c", model="claude", base_url="http://127.0.0.1:1/v1")
    req = Request(
        messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}),
        temperature=1.5,
        top_p=1.0,
        stop=("\n\n",),
        seed=3,
    )
    params = anthropic_params(ep, req)
    assert params == {
        "model": "claude",
        "max_tokens": 512,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 1.0,
        "stop_sequences": ["\n\n"],
    }


THINKING = {"type": "enabled", "budget_tokens": 1024}


@pytest.mark.parametrize(
    ("extra_body", "sent"),
    [
        ({}, {"top_p": 0.9}),
        ({"top_p": None}, {"temperature": 0.7}),  # the refusal hint's fix, as on the live path
        ({"temperature": None, "thinking": THINKING}, {"top_p": 0.9, "thinking": THINKING}),
        ({"temperature": 0.5}, {"temperature": 0.5, "top_p": 0.9}),  # both, asked for
    ],
    ids=["top_p", "no top_p", "thinking", "both"],
)
def test_an_anthropic_batch_sends_extra_body_and_one_of_temperature_and_top_p(
    extra_body, sent, batch_server, store
):
    """The params the provider receives: `extra_body` merged in (null removes a field), and
    a top_p below 1 in place of the temperature, which current Claude models refuse beside it."""
    ep = endpoint(batch_server.base_url, "anthropic").model_copy(
        update={
            "sampling": Sampling(temperature=0.7, top_p=0.9, max_tokens=2048),
            "extra_body": extra_body,
        }
    )
    assert all(r.ok for r in complete(ep, store, prompts(2)))
    (batch,) = batch_server.batches.values()
    for _, params, _ in batch.items:
        sampled = {k: v for k, v in params.items() if k not in ("model", "messages")}
        assert sampled == {"max_tokens": 2048, **sent}


@pytest.mark.parametrize("plan", ["expire", "cancel"])
@pytest.mark.parametrize("kind", [True, "anthropic"])
def test_failed_expired_and_cancelled_items_are_resubmitted_once(kind, plan, batch_server, store):
    batch_server.outcomes.append(plan)  # the first batch ends with half its items done
    batch_server.fail = lambda body, attempt: 500 if attempt == 1 and "1" in last(body) else None
    results = complete(endpoint(batch_server.base_url, kind), store, prompts(10))
    assert all(r.ok for r in results)
    assert len(batch_server.batches) == 2
    first, second = batch_server.batches.values()
    done_first = {cid for cid, out in first.outcome.items() if isinstance(out, str)}
    resubmitted = {cid for cid, _, _ in second.items}
    assert resubmitted == {cid for cid, _, _ in first.items} - done_first
    assert max(batch_server.submissions.values()) == 2  # each item at most twice
    # "question 1" failed with a 500 in the first half, and came back on its second attempt
    assert results[1].attempts == 2 and results[0].attempts == 1


def last(body: dict) -> str:
    return body["messages"][-1]["content"]


def test_an_item_that_keeps_failing_is_reported_with_the_providers_error(batch_server, store):
    batch_server.fail = lambda body, attempt: 503 if last(body) == "question 2" else None
    results = complete(endpoint(batch_server.base_url, max_attempts=3), store, prompts(4))
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].error == "HTTP 503: injected error 503" and results[2].attempts == 3
    assert len(batch_server.batches) == 3


def test_a_client_error_is_not_resubmitted(batch_server, store):
    batch_server.fail = lambda body, attempt: 400 if last(body) == "question 0" else None
    results = complete(endpoint(batch_server.base_url, "anthropic"), store, prompts(3))
    assert not results[0].ok and results[0].error.startswith("invalid_request_error")
    assert len(batch_server.batches) == 1


def test_a_rerun_sends_nothing_batch_or_live(batch_server, store):
    ep = endpoint(batch_server.base_url)
    first = complete(ep, store, prompts(6))
    again = complete(ep, store, prompts(6))
    # live calls to the same URL: the batch server serves no /chat/completions, so any
    # request sent would fail
    live = complete(ep.model_copy(update={"batch": False}), store, prompts(6))
    assert len(batch_server.batches) == 1
    assert [r.text for r in again] == [r.text for r in live] == [r.text for r in first]
    assert all(r.completion.cached for r in again + live)


def test_requests_are_split_at_the_size_limit(batch_server, store, monkeypatch):
    line = len(OpenAIBatches(endpoint(batch_server.base_url)).line("x" * 64, _resolved()))
    limit = 4 * line + 100  # four lines fit, five do not
    monkeypatch.setattr(OpenAIBatches, "max_bytes", limit)
    batch_server.max_bytes = limit  # the server refuses a bigger file
    results = complete(endpoint(batch_server.base_url), store, prompts(10))
    assert all(r.ok for r in results)
    assert [len(b.items) for b in batch_server.batches.values()] == [4, 4, 2]
    uploads = [batch_server.files[b.input_file_id] for b in batch_server.batches.values()]
    assert all(len(content) <= limit for content in uploads)


def test_requests_are_split_at_the_request_limit(batch_server, store, monkeypatch):
    monkeypatch.setattr(OpenAIBatches, "max_requests", 3)
    batch_server.max_requests = 3
    results = complete(endpoint(batch_server.base_url), store, prompts(7))
    assert all(r.ok for r in results)
    assert [len(b.items) for b in batch_server.batches.values()] == [3, 3, 1]


def _resolved() -> Request:
    return Request.user(
        "question 0", model="fake-model", temperature=0.8, top_p=1.0, max_tokens=512
    )


@pytest.mark.parametrize("discount", [0.5, 0.3])
def test_the_ledger_records_batch_calls_at_the_discounted_price(discount, batch_server, store):
    with LoopbackServer() as live:
        complete(endpoint(live.base_url, False), store, prompts(5))
    ep = endpoint(batch_server.base_url)
    ep = ep.model_copy(update={"price": PRICE.model_copy(update={"batch_discount": discount})})
    complete(ep, store, prompts(5))
    rows = store.db.execute(
        "SELECT batch IS NOT NULL, SUM(cost), SUM(prompt_tokens), SUM(completion_tokens), COUNT(*)"
        " FROM calls GROUP BY batch IS NOT NULL ORDER BY 1"
    ).fetchall()
    (_, live_cost, pt, ct, n_live), (_, batch_cost, pt_b, ct_b, n_batch) = rows
    assert (pt, ct, n_live) == (pt_b, ct_b, n_batch) == (pt, ct, 5)
    assert live_cost == pytest.approx(call_cost(PRICE, pt, ct))
    assert batch_cost == pytest.approx(discount * live_cost)


def test_budget_caps_a_batch_before_it_is_submitted(batch_server, store):
    """A submitted batch is paid whatever happens: only the requests whose worst case
    (prompt estimate plus max_tokens of output, at the batch price) fits go in, and once
    collected the budget counts what they cost, not what they held."""
    from mapd.llm import Budget, BudgetExceeded

    worst = call_cost(PRICE, len("question 0") // 4, 512, batch=True)
    budget = Budget(usd=2.5 * worst)

    async def go():
        client = client_for(endpoint(batch_server.base_url), store=store, run="r", budget=budget)
        try:
            await client.complete_many(prompts(5), progress=False)
        finally:
            await client.aclose()

    with pytest.raises(BudgetExceeded) as stopped:
        asyncio.run(go())
    assert [len(b.items) for b in batch_server.batches.values()] == [2]
    results = stopped.value.results
    assert [r.ok for r in results] == [True, True, False, False, False]
    assert all(r.skipped for r in results[2:])
    (spent,) = store.db.execute("SELECT SUM(cost) FROM calls").fetchone()
    assert budget.spent_usd == pytest.approx(spent) and 0 < spent < worst
    assert budget.held_usd == pytest.approx(0) and "held" not in str(stopped.value)
    # while a batch waits, its worst case is said to be held, not spent
    waiting = Budget(usd=1.0)
    waiting.hold(0.75, 600)
    assert waiting.describe() == (
        "$0.7500 of budget.usd 1.0, $0.7500 of it held; "
        "held: the worst case of submitted batches, until they are collected"
    )
    waiting.settle((0.75, 600), 0.01, 90)
    assert waiting.describe() == "$0.0100 of budget.usd 1.0"


def test_a_killed_wait_resumes_the_recorded_batch(batch_server, store, tmp_path):
    """The batch a run submitted (recorded in the database) is polled again by the next run,
    not submitted again; the process kill itself is tested with `mapd run` in tests/stages."""
    batch_server.tick = 0  # the batch stays in progress

    async def wait_until_submitted_then_stop():
        client = client_for(endpoint(batch_server.base_url), store=store, run="r", run_dir=tmp_path)
        waiting = asyncio.ensure_future(client.complete_many(prompts(5), progress=False))
        try:
            for _ in range(3000):  # however loaded the machine, stop only once it is polling
                if batch_server.batches and store.db.execute("SELECT 1 FROM batches").fetchone():
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert not waiting.done()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        finally:
            await client.aclose()

    asyncio.run(wait_until_submitted_then_stop())
    assert store.db.execute("SELECT collected FROM batches").fetchall() == [(0,)]
    batch_server.tick = 1
    results = complete(endpoint(batch_server.base_url), store, prompts(5))
    assert all(r.ok for r in results) and len(batch_server.batches) == 1


def test_batches_of_an_old_database_get_their_ledger_column(tmp_path):
    from mapd.llm import open_store

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE calls (id INTEGER PRIMARY KEY, run TEXT)")
    with open_store(path) as store:
        columns = {row[1] for row in store.db.execute("PRAGMA table_info(calls)")}
    assert "batch" in columns


def test_progress_shows_each_batch_status_counts_and_time_since_submission(
    batch_server, store, capsys
):
    async def go():
        client = client_for(endpoint(batch_server.base_url), store=store, run="r")
        try:
            await client.complete_many(prompts(10), desc="teach: t")  # progress as in a log
        finally:
            await client.aclose()

    asyncio.run(go())
    (batch_id,) = batch_server.batches
    lines = [line for line in capsys.readouterr().err.splitlines() if batch_id in line]
    statuses = [line.split(f"{batch_id}: ", 1)[1].split(" ", 1)[0] for line in lines]
    assert statuses[0] == "validating" and statuses[-1] == "completed"
    assert "in_progress" in statuses and "finalizing" in statuses
    assert any("in_progress 5/10 · " in line for line in lines)
    assert all(line.endswith("since submission") for line in lines)


def test_batch_is_a_setting_of_http_endpoints_only():
    with pytest.raises(ValueError, match="batch set, but backend transformers"):
        ModelEndpoint(model="m", backend="transformers", batch="anthropic")
    with pytest.raises(ValueError):
        ModelEndpoint(model="m", base_url="http://127.0.0.1:1/v1", batch="gemini")
    assert (
        ModelEndpoint(model="m", base_url="http://127.0.0.1:1/v1", batch=True).batch_kind
        == "openai"
    )
    assert ModelEndpoint(model="m", base_url="http://127.0.0.1:1/v1").batch_kind is None


def test_mapd_ledger_counts_the_batch_calls(batch_server, store, tmp_path):
    from typer.testing import CliRunner

    from mapd.cli import app
    from mapd.llm import run_id

    async def go():
        run = run_id(tmp_path)
        for batch in (True, False):  # the second pass is answered by the cache
            client = client_for(endpoint(batch_server.base_url, batch), store=store, run=run)
            await client.complete_many(prompts(3), progress=False)
            await client.aclose()

    asyncio.run(go())
    result = CliRunner().invoke(app, ["ledger", str(tmp_path)])
    assert result.exit_code == 0, result.output
    header, *_, total = result.output.splitlines()
    assert header.split()[5] == "batch"
    assert total.split()[1:5] == ["6", "3", "0", "3"]  # calls, cached, failed, batch


@pytest.mark.parametrize("kind", [True, "anthropic"], ids=["openai", "anthropic"])
def test_a_batch_created_but_not_yet_recorded_is_found_again(
    kind, batch_server, store, monkeypatch
):
    """A kill between the provider creating a batch and the database recording it: the next
    run finds the batch (by its metadata, or for Anthropic by its size and time) instead of
    paying for it again."""
    from mapd.llm.batch import BatchRun

    class Killed(Exception):
        pass

    record = BatchRun.record

    async def killed_before_recording(self, b, state):
        raise Killed

    monkeypatch.setattr(BatchRun, "record", killed_before_recording)
    with pytest.raises(Killed):
        complete(endpoint(batch_server.base_url, kind), store, prompts(5))
    assert store.db.execute("SELECT COUNT(*) FROM batches").fetchone() == (0,)
    monkeypatch.setattr(BatchRun, "record", record)
    results = complete(endpoint(batch_server.base_url, kind), store, prompts(5))
    assert all(r.ok and r.attempts == 1 for r in results)
    assert len(batch_server.batches) == 1 and max(batch_server.submissions.values()) == 1
    assert store.db.execute("SELECT COUNT(*) FROM batch_intents").fetchone() == (0,)


def test_a_fresh_anthropic_submission_takes_no_batch_of_the_same_size(batch_server, store):
    """Another database's batch of as many requests, made a moment before, is not taken for
    this one's: only a noted submission that was never recorded looks for its batch."""
    with open_store(store.path.with_name("other.sqlite")) as other:
        complete(endpoint(batch_server.base_url, "anthropic"), other, prompts(3)[::-1])
    results = complete(endpoint(batch_server.base_url, "anthropic"), store, prompts(3))
    assert all(r.ok and r.attempts == 1 for r in results)
    assert len(batch_server.batches) == 2


def killed_before_recording(monkeypatch, run):
    """Run `run` with every batch made but killed before the database records it."""
    from mapd.llm.batch import BatchRun

    async def killed(self, b, state):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(BatchRun, "record", killed)
        with pytest.raises(KeyboardInterrupt):
            run()


@pytest.mark.parametrize("kind", [True, "anthropic"], ids=["openai", "anthropic"])
@pytest.mark.parametrize("kill", ["before recording", "while polling"])
def test_a_run_resumed_with_another_batch_tokens_submits_each_request_once(
    kind, kill, batch_server, store, monkeypatch
):
    """The first run fits 3 requests in limits.batch_tokens and is killed once that batch
    is made; the next, with room for all 7, splits them otherwise, yet pays for none twice:
    a batch is found again by the requests it holds, not by the lines of a chunk."""
    first = endpoint(batch_server.base_url, kind, batch_tokens=3 * PER_REQUEST + 10)
    if kill == "before recording":
        killed_before_recording(monkeypatch, lambda: complete(first, store, prompts(7)))
    else:
        batch_server.tick = 0  # the batch stays in progress
        killed_while_polling(first, store)
    assert [len(b.items) for b in batch_server.batches.values()] == [3]
    batch_server.tick = 1
    results = complete(endpoint(batch_server.base_url, kind), store, prompts(7))
    assert all(r.ok and r.attempts == 1 for r in results)
    assert [len(b.items) for b in batch_server.batches.values()] == [3, 4]
    assert set(batch_server.submissions.values()) == {1}
    assert store.db.execute("SELECT COUNT(*) FROM batch_intents").fetchone() == (0,)


def killed_while_polling(ep, store):
    """Run 7 requests to `ep` and stop the run once its first batch is recorded."""

    async def go():
        client = client_for(ep, store=store, run="r")
        waiting = asyncio.ensure_future(client.complete_many(prompts(7), progress=False))
        try:
            for _ in range(3000):  # however loaded the machine, stop only once it is polling
                if store.db.execute("SELECT 1 FROM batches").fetchone():
                    break
                await asyncio.sleep(0.01)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        finally:
            await client.aclose()

    asyncio.run(go())


def test_an_anthropic_batch_wrongly_taken_for_ours_costs_a_wait_not_a_wrong_answer(
    batch_server, store, monkeypatch
):
    """Killed before recording; the provider then lost that batch, and another database's
    batch of the same size is the one found: its results answer none of our requests, so
    nothing of it enters our ledger, the guess is no attempt, and every reply is our own."""
    ep = endpoint(batch_server.base_url, "anthropic")
    killed_before_recording(monkeypatch, lambda: complete(ep, store, prompts(3)))
    batch_server.batches.clear()
    with open_store(store.path.with_name("other.sqlite")) as other:
        complete(ep, other, prompts(6)[3:])
    results = complete(ep, store, prompts(3))
    assert [r.text for r in results] == [f"[fake-model] reply to: question {i}" for i in range(3)]
    assert all(r.ok and r.attempts == 1 for r in results)
    assert len(batch_server.batches) == 2  # the other database's, then ours
    (other_id,) = [i for i, b in batch_server.batches.items() if b.items[0][0] not in ours(store)]
    assert store.db.execute(
        "SELECT COUNT(*) FROM calls WHERE batch = ?", (other_id,)
    ).fetchone() == (0,)
    assert store.db.execute("SELECT status FROM batches WHERE id = ?", (other_id,)).fetchone() == (
        "not ours",
    )


def ours(store) -> set[str]:
    return {row[0] for row in store.db.execute("SELECT custom_id FROM batch_items")}


def test_two_anthropic_teachers_killed_while_submitting_the_same_questions_never_swap(
    batch_server, store, monkeypatch
):
    """Two teachers' batches of the same size, both unrecorded: which is whose cannot be
    told, so each teacher makes a new batch (paid again) rather than take the other's."""

    def both(names):
        async def go():
            clients = [
                client_for(
                    endpoint(batch_server.base_url, "anthropic").model_copy(
                        update={"name": name, "model": name}
                    ),
                    store=store,
                    run="run-1",
                    stage="teach",
                )
                for name in names
            ]
            try:
                asks = (c.complete_many(prompts(3), progress=False) for c in clients)
                return await asyncio.gather(*asks, return_exceptions=True)
            finally:
                for c in clients:
                    await c.aclose()

        return asyncio.run(go())

    from mapd.llm.batch import BatchRun

    async def killed(self, b, state):
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(BatchRun, "record", killed)
        assert all(isinstance(r, RuntimeError) for r in both(("claude-a", "claude-b")))
    assert len(batch_server.batches) == 2 and store.db.execute(
        "SELECT COUNT(*) FROM batch_intents"
    ).fetchone() == (2,)
    again = ("claude-b", "claude-a")  # the other order: the older batch is claude-a's
    for name, results in zip(again, both(again), strict=True):
        assert all(r.ok and r.text.startswith(f"[{name}]") for r in results)
    assert len(batch_server.batches) == 4


def test_a_refused_create_leaves_no_note_to_guess_from(store):
    """A create the provider refuses (HTTP 400) made no batch: its note is dropped, so a
    later submission of the same lines does not look for a batch that cannot exist."""

    class Refusing(BatchServer):
        async def create_anthropic(self, request):
            return web.json_response({"error": {"message": "no"}}, status=400)

    with Refusing() as server:
        results = complete(endpoint(server.base_url, "anthropic"), store, prompts(2))
    assert not any(r.ok for r in results)
    assert store.db.execute("SELECT COUNT(*) FROM batch_intents").fetchone() == (0,)


@pytest.mark.parametrize(
    "stamp",
    [
        "2024-08-20T18:37:24.100435Z",
        "2024-08-20T18:37:24.1Z",
        "2024-08-20T18:37:24.100435123Z",
        "2024-08-20T18:37:24.100435+00:00",
    ],
)
def test_anthropic_times_are_read_with_any_fraction_of_a_second(stamp):
    from mapd.llm.batch_api import epoch_seconds

    assert epoch_seconds(stamp) == pytest.approx(1724179044.1, abs=0.001)
    assert epoch_seconds(None) is None and epoch_seconds("yesterday") is None


@pytest.mark.parametrize("kind", [True, "anthropic"], ids=["openai", "anthropic"])
def test_a_create_whose_reply_was_lost_is_found_not_made_again(kind, batch_server, store):
    batch_server.lost_replies = 1  # the batch is made; the client sees a dropped connection
    results = complete(endpoint(batch_server.base_url, kind), store, prompts(4))
    assert all(r.ok and r.attempts == 1 for r in results)
    assert len(batch_server.batches) == 1 and max(batch_server.submissions.values()) == 1


@pytest.mark.parametrize("kind", [True, "anthropic"])
def test_a_results_file_longer_to_fetch_than_the_timeout_still_arrives(kind, batch_server, store):
    batch_server.download_seconds = 1.5  # each tenth within the 0.5 s timeout, the whole not
    ep = endpoint(batch_server.base_url, kind, timeout=0.5, max_attempts=2)
    results = complete(ep, store, prompts(3))
    assert all(r.ok for r in results)


class NotABatchServer(BatchServer):
    """Answers a status look with JSON that is no batch, as a gateway that serves none."""

    async def get_batch(self, request):
        return web.json_response({"object": "list", "data": []})


@pytest.mark.parametrize("kind", [True, "anthropic"])
def test_a_reply_that_is_no_batch_stops_the_endpoint_with_one_clear_error(kind, store):
    from mapd.llm import EndpointUnavailable

    with NotABatchServer() as server, pytest.raises(EndpointUnavailable) as stopped:
        complete(endpoint(server.base_url, kind), store, prompts(2))
    assert "in the reply" in stopped.value.message and "batch" in stopped.value.message


PER_REQUEST = len("question 0") // 4 + 512  # tokens a request holds in the queue


def test_batches_wait_their_turn_under_the_enqueued_token_limit(batch_server, store):
    batch_server.enqueued_tokens = 3 * PER_REQUEST + 10  # beyond it a batch fails whole
    ep = endpoint(batch_server.base_url, batch_tokens=3 * PER_REQUEST + 10)
    results = complete(ep, store, prompts(7))
    assert all(r.ok and r.attempts == 1 for r in results)
    assert [len(b.items) for b in batch_server.batches.values()] == [3, 3, 1]


def test_a_batch_over_the_enqueued_token_limit_says_which_setting_to_change(batch_server, store):
    batch_server.enqueued_tokens = 2 * PER_REQUEST
    results = complete(endpoint(batch_server.base_url, max_attempts=2), store, prompts(3))
    assert not any(r.ok for r in results)
    assert "Enqueued token limit" in results[0].error and "limits.batch_tokens" in results[0].error
    assert len(batch_server.batches) == 2  # tried again once: the queue may have emptied


def test_a_batches_table_without_cancel_asked_gets_it(tmp_path):
    from mapd.llm import open_store
    from mapd.llm.store import SCHEMA

    path = tmp_path / "earlier.sqlite"
    with sqlite3.connect(path) as db:  # the table as the first batch builds made it
        db.executescript(SCHEMA.replace(",\n    cancel_asked INTEGER NOT NULL DEFAULT 0", ""))
    with open_store(path) as store:
        columns = {row[1] for row in store.db.execute("PRAGMA table_info(batches)")}
    assert "cancel_asked" in columns


def test_a_batch_reply_keeps_the_reasoning_apart_from_the_answer():
    """A reasoning model's thinking in a batch output line is kept as on the live path."""
    line = {
        "custom_id": "x",
        "response": {
            "status_code": 200,
            "body": {
                "model": "o4-mini",
                "choices": [
                    {
                        "message": {"content": "The answer is 4.", "reasoning_content": "2+2"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 10,
                    "completion_tokens": 30,
                    "completion_tokens_details": {"reasoning_tokens": 22},
                },
            },
        },
    }
    done = OpenAIBatches(endpoint("http://127.0.0.1:9/v1")).outcome(line, 0.0)
    assert (done.text, done.reasoning, done.reasoning_tokens) == ("The answer is 4.", "2+2", 22)


def test_creates_refused_while_our_batches_fill_the_queue_wait_for_them(
    batch_server, store, monkeypatch, sleeps
):
    """Azure's "fail fast" regions refuse the create itself (HTTP 400 token_limit_exceeded)
    instead of failing the batch later: the refused requests wait until our batches finish,
    and no refusal counts as an attempt."""
    batch_server.enqueued_tokens = 3 * PER_REQUEST + 10
    batch_server.refuse_when_full = True
    monkeypatch.setattr(OpenAIBatches, "max_requests", 3)
    results = complete(endpoint(batch_server.base_url), store, prompts(7))
    assert all(r.ok and r.attempts == 1 for r in results)
    assert [len(b.items) for b in batch_server.batches.values()] == [3, 3, 1]
    assert batch_server.creates == 6 and sleeps == []  # 3 refused, each tried after a batch


def test_a_create_refused_with_none_of_ours_waiting_fails_saying_what_to_set(
    batch_server, store, sleeps
):
    """Others' batches fill the queue: each refusal is an attempt after a pause, and the
    requests fail at limits.max_attempts with the provider's message and the setting."""
    batch_server.enqueued_tokens = 2 * PER_REQUEST
    batch_server.refuse_when_full = True
    results = complete(endpoint(batch_server.base_url, max_attempts=2), store, prompts(3))
    assert not any(r.ok for r in results) and all(r.attempts == 2 for r in results)
    assert "Enqueued token limit" in results[0].error and "limits.batch_tokens" in results[0].error
    assert batch_server.batches == {} and batch_server.creates == 2 and len(sleeps) == 1


class CapitalisedServer(BatchServer):
    """Says "Validating", "Completed" as Azure's REST examples show."""

    def openai_view(self, batch):
        view = super().openai_view(batch)
        return {**view, "status": view["status"].capitalize()}


def test_a_batch_status_in_capitals_still_ends(store):
    async def go(server):
        client = client_for(endpoint(server.base_url), store=store, run="r")
        try:
            return await asyncio.wait_for(client.complete_many(prompts(2), progress=False), 20)
        finally:
            await client.aclose()

    with CapitalisedServer() as server:
        results = asyncio.run(go(server))
    assert all(r.ok for r in results)

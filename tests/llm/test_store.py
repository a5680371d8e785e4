"""The call database: writes of one event-loop turn commit together; failures reach every writer."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from contextlib import contextmanager

import pytest

from mapd.llm import open_store


def insert(store, n: int):
    return (
        "INSERT INTO calls (run, stage, endpoint, backend, model, key, prompt_tokens,"
        " completion_tokens, latency, cost, cached, ok, attempts, created)"
        " VALUES ('r', 's', 'e', 'b', 'm', ?, 0, 0, 0, 0, 0, 1, 1, 0)",
        (f"k{n}",),
    )


def count_transactions(store, monkeypatch) -> list[int]:
    opened: list[int] = []
    original = store.transaction

    @contextmanager
    def counting():
        opened.append(1)
        with original():
            yield

    monkeypatch.setattr(store, "transaction", counting)
    return opened


def test_writes_of_one_turn_share_one_commit_and_are_done_when_awaited(monkeypatch):
    with open_store() as store:
        opened = count_transactions(store, monkeypatch)

        async def go():
            await asyncio.gather(*(store.write(insert(store, n)) for n in range(50)))
            assert store.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 50
            await store.write(insert(store, 50))

        asyncio.run(go())
        assert len(opened) == 2
    with open_store() as other:  # committed: another connection sees every row
        assert other.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 51


def test_a_failed_commit_raises_in_every_writer_and_writes_nothing():
    with open_store() as store:
        broken = ("INSERT INTO no_such_table VALUES (?)", (1,))

        async def go():
            return await asyncio.gather(
                store.write(insert(store, 1)), store.write(broken), return_exceptions=True
            )

        results = asyncio.run(go())
        assert [type(r) for r in results] == [sqlite3.OperationalError] * 2
        assert store.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 0
        assert not store.db.in_transaction


def test_a_cancelled_writer_does_not_cancel_the_others_commit():
    with open_store() as store:

        async def go():
            first = asyncio.create_task(store.write(insert(store, 1)))
            second = asyncio.create_task(store.write(insert(store, 2)))
            await asyncio.sleep(0)  # both queued, commit scheduled
            first.cancel()
            await second
            with pytest.raises(asyncio.CancelledError):
                await first

        asyncio.run(go())
        assert store.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 2


def test_writes_left_by_a_loop_that_ended_are_committed_not_lost():
    with open_store() as store:
        loop = asyncio.new_event_loop()

        async def queue_and_leave():
            asyncio.ensure_future(store.write(insert(store, 1)))

        loop.run_until_complete(queue_and_leave())  # the commit's turn never comes
        loop.close()

        async def next_run():
            await store.write(insert(store, 2))

        asyncio.run(next_run())
        assert store.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 2


def test_rows_of_several_statements_commit_together_each_in_written_order(monkeypatch):
    reply = (
        "INSERT INTO responses (key, backend, model, request, text, finish_reason,"
        " prompt_tokens, completion_tokens, latency, created)"
        " VALUES (?, 'b', 'm', '{}', 't', 'stop', 0, 0, 0, 0)"
    )
    with open_store() as store:
        opened = count_transactions(store, monkeypatch)

        async def go():
            await asyncio.gather(
                *(store.write(insert(store, n), (reply, (f"r{n}",))) for n in range(5))
            )

        asyncio.run(go())
        assert len(opened) == 1
        keys = [k for (k,) in store.db.execute("SELECT key FROM calls ORDER BY id")]
        assert keys == [f"k{n}" for n in range(5)]
        assert store.db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 5


def test_a_database_of_an_older_mapd_gets_the_new_columns_and_keeps_its_replies(tmp_path):
    from mapd.llm.cache import ResponseCache

    path = tmp_path / "calls.sqlite"
    with sqlite3.connect(path) as db:  # the tables as the first release made them
        db.execute(
            "CREATE TABLE responses (key TEXT PRIMARY KEY, backend TEXT NOT NULL, model TEXT"
            " NOT NULL, request TEXT NOT NULL, text TEXT NOT NULL, finish_reason TEXT,"
            " prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,"
            " latency REAL NOT NULL, created REAL NOT NULL)"
        )
        db.execute(
            "INSERT INTO responses VALUES ('k', 'openai', 'm', '{}', 'hi', 'stop', 1, 2, 0, 0)"
        )
    with open_store(path) as store:
        hit = ResponseCache(store).get("k")
        columns = {row[1] for row in store.db.execute("PRAGMA table_info(calls)")}
    assert (hit.text, hit.reasoning, hit.reasoning_tokens) == ("hi", None, 0)
    assert {"finish_reason", "reasoning_tokens", "estimated", "timeouts"} <= columns
    with open_store(path):  # opened again: nothing to add, no error
        pass


def test_calls_of_an_older_database_count_no_stalls_and_new_calls_count_theirs(tmp_path):
    from mapd.llm.ledger import CallRecord, call_row, ledger_totals, run_id
    from mapd.llm.store import SCHEMA

    run_dir, path = tmp_path / "run", tmp_path / "calls.sqlite"
    with sqlite3.connect(path) as db:  # the tables as the first release made them, one call
        db.executescript(SCHEMA)
        db.execute(
            "INSERT INTO calls (run, stage, endpoint, backend, model, key, prompt_tokens,"
            " completion_tokens, latency, cost, cached, ok, attempts, created)"
            " VALUES (?, 'teach', 't', 'openai', 'm', 'k0', 5, 7, 0.1, 0, 0, 1, 1, 0)",
            (run_id(run_dir),),
        )
    with open_store(path) as store:
        (old,) = ledger_totals(store, run_dir)
        record = CallRecord(run_id(run_dir), "teach", "t", "openai", "m", "k1", None, 0, "x", 3)
        asyncio.run(store.write(call_row(dataclasses.replace(record, stalls=2))))
        (both,) = ledger_totals(store, run_dir)
    assert (old.calls, old.stalls) == (1, 0)
    assert (both.calls, both.stalls, both.failed) == (2, 2, 1)

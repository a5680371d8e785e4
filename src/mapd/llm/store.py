"""The call database: one SQLite file in the mapd home holding the response cache and the ledger.

    store = open_store()            # $MAPD_HOME/calls.sqlite, WAL mode
    store.close()

WAL mode with a busy timeout lets two processes (say, two runs sharing teachers) read and
write the same file at once. A call's writes are committed before the call returns, so a
run killed at any point keeps everything it finished. `await store.write(*rows)` commits
the rows of every call that finished in the same event-loop turn in one transaction, one
`executemany` per statement: a burst of 64 replies costs one WAL commit, not 64.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mapd.errors import MapdError
from mapd.llm.home import mapd_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency REAL NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    stage TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    key TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency REAL NOT NULL,
    cost REAL NOT NULL,
    cached INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_run ON calls (run);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    stage TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    kind TEXT NOT NULL,
    base_url TEXT NOT NULL,
    status TEXT NOT NULL,
    requests INTEGER NOT NULL,
    done INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    submitted REAL NOT NULL,
    updated REAL NOT NULL,
    collected INTEGER NOT NULL,
    cancel_asked INTEGER NOT NULL DEFAULT 0  -- when `mapd batches --cancel` asked (unix time), or 0
);
CREATE TABLE IF NOT EXISTS batch_items (
    batch TEXT NOT NULL,
    custom_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    PRIMARY KEY (batch, custom_id)
);
-- a batch about to be created: kept until the batch is recorded, so that a run killed (or a
-- create whose reply was lost) in between knows since when the provider may hold it
CREATE TABLE IF NOT EXISTS batch_intents (
    submission TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    base_url TEXT NOT NULL,
    requests INTEGER NOT NULL,
    started REAL NOT NULL
);
"""
# Columns added after the first release: added to an older database when it is opened.
ADDED_COLUMNS = {
    "responses": {
        "reasoning": "TEXT",  # a reasoning model's thinking, returned beside the answer
        "reasoning_tokens": "INTEGER NOT NULL DEFAULT 0",
    },
    "calls": {
        "batch": "TEXT",  # the provider's batch id, for a call sent in a batch
        "finish_reason": "TEXT",
        "reasoning_tokens": "INTEGER NOT NULL DEFAULT 0",
        "estimated": "INTEGER NOT NULL DEFAULT 0",  # the endpoint sent no usage
        "timeouts": "INTEGER NOT NULL DEFAULT 0",  # attempts that timed out
        "stalls": "INTEGER NOT NULL DEFAULT 0",  # attempts whose connection stalled
    },
    "batches": {"cancel_asked": "INTEGER NOT NULL DEFAULT 0"},  # `mapd batches --cancel`
}

DB_NAME = "calls.sqlite"

Row = tuple[str, Sequence[Any]]  # an INSERT statement and its parameters


def add_missing_columns(db: sqlite3.Connection) -> None:
    for table, columns in ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns.items():
            if name in have:
                continue
            try:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise


class CallStore:
    """An open call database. Used from one event loop; other processes may use the file too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(
                path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            add_missing_columns(self.db)
        except (sqlite3.Error, OSError) as exc:
            raise MapdError(
                f"cannot open the call database {path}: {exc}",
                "check that MAPD_HOME points to a writable folder",
            ) from None
        self._queued: list[Row] = []
        self._committed: asyncio.Future[None] | None = None  # the queued writes' commit

    async def write(self, *rows: Row) -> None:
        """Write `rows` in a transaction shared with the rows queued in this loop turn; return
        once committed. A failed commit (a full disk, say) raises in every writer."""
        loop = asyncio.get_running_loop()
        if self._committed is not None and self._committed.get_loop() is not loop:
            self._commit_queued()  # a loop ended before its turn did: commit what it left
        if self._committed is None:
            self._committed = loop.create_future()
            loop.call_soon(self._commit_queued)
        self._queued.extend(rows)
        # shielded: a writer that is cancelled must not cancel the others' commit
        await asyncio.shield(self._committed)

    def _commit_queued(self) -> None:
        done, self._committed = self._committed, None
        queued, self._queued = self._queued, []
        assert done is not None
        by_statement: dict[str, list[Sequence[Any]]] = {}
        for sql, params in queued:
            by_statement.setdefault(sql, []).append(params)
        try:
            with self.transaction():
                for sql, rows in by_statement.items():
                    self.db.executemany(sql, rows)
        except BaseException as exc:
            if done.get_loop().is_closed() or isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            done.set_exception(exc)
            done.exception()  # retrieved: writers that were cancelled cannot see it
        else:
            if not done.get_loop().is_closed():  # else no writer is left to tell
                done.set_result(None)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Writes inside commit together (one WAL commit instead of one per statement).

        A full disk is a MapdError; SQLite has then rolled the transaction back itself."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                raise
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise MapdError(
                f"disk full while writing the call database {self.path}",
                "free some space and run again; finished work is kept",
            ) from None

    def close(self) -> None:
        if self._committed is not None:  # writes whose loop ended before their turn
            self._commit_queued()
        self.db.close()

    def __enter__(self) -> CallStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(path: str | Path | None = None) -> CallStore:
    """Open (creating if needed) the call database; default `$MAPD_HOME/calls.sqlite`."""
    return CallStore(Path(path) if path else mapd_home() / DB_NAME)

"""Opening the run's LLM clients for a stage, and turning failed calls into one clear error."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mapd.config import ModelEndpoint, RunConfig
from mapd.errors import MapdError
from mapd.llm.batch import CANCELLED_BY_USER
from mapd.llm.client import Client, client_for
from mapd.llm.ledger import Budget, run_id
from mapd.llm.store import open_store
from mapd.llm.types import CallResult


def endpoint_settings(endpoint: ModelEndpoint, fields: set[str]) -> dict[str, Any]:
    """The endpoint's fields that decide its replies, for a stage's fingerprint. The optional
    ones (extra_body, sampling.reasoning_effort) appear only when set: an endpoint that does
    not use them keeps the fingerprint it has without them, and its stage is not redone."""
    settings = endpoint.model_dump(include=fields)
    if endpoint.extra_body:
        settings["extra_body"] = endpoint.extra_body
    if "sampling" in settings and endpoint.sampling.reasoning_effort is None:
        del settings["sampling"]["reasoning_effort"]
    return settings


@asynccontextmanager
async def open_clients(
    cfg: RunConfig,
    run_dir: Path,
    stage: str,
    endpoints: Sequence[ModelEndpoint],
    scope: str | None = None,
) -> AsyncIterator[dict[str, Client]]:
    """Clients sharing one cache/ledger store and the run's budget, closed on exit;
    `scope` goes into their cache keys (see `client_for`)."""
    store = open_store()
    run = run_id(run_dir)
    budget = Budget.for_run(cfg.budget, store, run)
    clients = {
        e.name: client_for(
            e,
            store=store,
            run=run,
            stage=stage,
            budget=budget,
            cache_mode=cfg.cache,
            scope=scope,
            run_dir=run_dir,
        )
        for e in endpoints
    }
    try:
        yield clients
    finally:
        for client in clients.values():
            await client.aclose()
        store.close()


def raise_if_failed(stage: str, what: str, results: Sequence[CallResult]) -> None:
    """Stop the stage when any call failed for good: nothing is written, finished calls are cached."""
    failed = [r for r in results if not r.ok]
    if failed:
        cancelled = all((r.error or "").startswith(CANCELLED_BY_USER) for r in failed)
        raise MapdError(
            f"{stage}: {len(failed)} of {len(results)} {what} calls failed; first error: {failed[0].error}",
            "run again to submit them anew; finished calls are cached"
            if cancelled
            else "fix the cause and run again: finished calls are cached and will not be paid twice",
        )

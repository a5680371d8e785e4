"""LLM calls for mapd: one interface over OpenAI-compatible HTTP and in-process transformers models.

Public API
----------
Request(messages, model=None, temperature=None, top_p=None, max_tokens=None, stop=None,
        seed=None, sample=0, tag=None, reasoning_effort=None)
                                                fields left None come from the endpoint config
Request.user(prompt, **fields) -> Request       one user message
Completion: text, finish_reason, prompt_tokens, completion_tokens, latency, backend, model,
            cached, reasoning, reasoning_tokens, estimated; .cut_off
CallResult: request, completion | None, error | None, attempts, skipped, timeouts, stalls;
            .ok, .text

open_store(path=None) -> CallStore              SQLite in $MAPD_HOME (cache + ledger), WAL mode
client_for(endpoint, *, store, run="", stage="", budget=None, cache_mode="use", scope=None,
           run_dir=None)
    -> Client; `scope` is added to its cache keys (e.g. a stamp of the weights a server holds);
    a batch endpoint records its batches in `run_dir`/batches/
Client.complete(request) -> Completion          raises CallFailed (a MapdError) on failure
Client.complete_many(requests, *, desc=None, progress=None) -> list[CallResult]
    concurrent, limited, retried, cached; results in input order. Failed items carry their
    error. Raises BudgetExceeded / EndpointUnavailable (CallsStopped, with .results) after
    the batch when items could not be sent.
Budget.for_run(cfg.budget, store, run) -> Budget     shared cap; counts earlier invocations
run_id(run_dir) -> str                          a run's id, kept in its folder
cache_stats(store) -> CacheStats; clear_cache(store, model=None) -> int
ledger_totals(store, run_dir) -> list[LedgerRow]     per stage and endpoint
load_model(spec, device="auto", dtype="auto") -> LoadedModel   (in-process models, shared)

Example
-------
    from mapd.llm import Request, client_for, open_store

    async def teach(teacher, prompts):
        with open_store() as store:
            client = client_for(teacher, store=store, run="demo", stage="teach")
            requests = [Request.user(p, tag=qid) for qid, p in prompts]
            results = await client.complete_many(requests, desc=f"feedback {teacher.name}")
            await client.aclose()
        return {r.request.tag: r.text for r in results if r.ok}

    asyncio.run(teach(cfg.teachers[0], prompts))        # only at the CLI boundary

The stages open their clients through `mapd.stages.calls.open_clients` (one store and one
budget per stage).

Behaviour worth knowing
-----------------------
- Cache key: `sha256:` of backend kind, base URL (the first, when `base_url` lists
  replicas), model, messages, every sampling parameter, the endpoint's `extra_body` and the
  sample index (never the key, never `tag`). Identical requests in
  flight at once are sent once. Errors, empty replies and content-filtered replies are
  never cached. `cache: refresh` re-sends and overwrites; `off` neither reads nor writes.
- Retries: 408, 409, 429, 5xx, connection errors, timeouts and malformed replies, with
  exponential backoff and jitter, or the server's Retry-After / retry-after-ms on 429
  and 503; `limits.max_attempts` in all. An empty reply that stopped normally is sent
  again; one cut by the token limit or a content filter, and a 400, fail the item.
  401, 403, 404, or nothing but failures for concurrency x max_attempts attempts in a
  row, mark the endpoint down: the rest of the batch fails fast; so does the same refusal
  of the body (another 4xx) three times in a row, with the setting that fixes it. A
  timed-out request is sent again only once the server answered a request sent after it,
  or after one more `limits.timeout`: a server that works through a queue is not sent
  a second copy of what it still holds.
- Bodies: see `openai_backend.request_body` (what each provider is sent, `extra_body`).
- Usage: a reply without `usage` gets its tokens estimated from the text (said once).
- Budget: counts paid calls (not cache hits, not in-process models) of every endpoint
  of the run, including earlier invocations; once reached no new request starts.
- Batch endpoints (`batch: true` for OpenAI's Batch API, `batch: anthropic` for Anthropic's
  Message Batches): `complete_many` sends the cache misses as batches, polls them every
  `limits.poll_interval` seconds and returns the same CallResults; see mapd.llm.batch for
  resuming after a kill, resubmission and cost. `complete` (one request) stays live.
- Transformers: concurrent requests with the same decoding settings are batched
  (`batch_size`); the model loads on the first call and stays loaded in the process.

Keys: `api_key_env` names an environment variable; its value is read when the client
first sends and never reaches the cache, the ledger, logs or error messages.
"""

from __future__ import annotations

from mapd.llm.cache import CacheMode, CacheStats, cache_stats, clear_cache, request_key
from mapd.llm.client import (
    BudgetExceeded,
    CallFailed,
    CallsStopped,
    Client,
    EndpointUnavailable,
    client_for,
)
from mapd.llm.ledger import Budget, LedgerRow, ledger_totals, run_id
from mapd.llm.model_loading import LoadedModel, load_model
from mapd.llm.store import CallStore, open_store
from mapd.llm.types import CallResult, Completion, Request

__all__ = [
    "Budget",
    "BudgetExceeded",
    "CacheMode",
    "CacheStats",
    "CallFailed",
    "CallResult",
    "CallStore",
    "CallsStopped",
    "Client",
    "Completion",
    "EndpointUnavailable",
    "LedgerRow",
    "LoadedModel",
    "Request",
    "cache_stats",
    "clear_cache",
    "client_for",
    "ledger_totals",
    "load_model",
    "open_store",
    "request_key",
    "run_id",
]

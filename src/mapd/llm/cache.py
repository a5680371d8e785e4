"""The response cache: a reply stored under a tagged hash of the canonical request.

The key covers the backend kind, base URL, model, messages, every sampling parameter, the
endpoint's `extra_body` and the sample index, never the API key. Only complete replies are stored: errors, empty
texts and replies stopped by a content filter or an error never are.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mapd.llm.store import CallStore, Row
from mapd.llm.types import Completion, Request

CacheMode = Literal["use", "refresh", "off"]

# Finish reasons that mean the text is not a whole answer worth keeping.
UNCACHEABLE_FINISH = {"content_filter", "error"}


def canonical_json(
    request: Request,
    backend: str,
    scope: str | None,
    extra_body: dict[str, Any] | None = None,
) -> str:
    """The canonical JSON of everything that decides the reply; `scope` is the endpoint's
    URL, or the precision of an in-process model; `extra_body` the endpoint's additions to
    the body (absent when empty, so configs without it keep their keys). Stored beside the
    reply, so a cached reply shows what it answered."""
    canonical = {"backend": backend, "base_url": scope, **request.canonical()}
    if extra_body:
        canonical["extra_body"] = extra_body
    return json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def key_of(canonical: str) -> str:
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def request_key(request: Request, backend: str, scope: str | None) -> str:
    """`sha256:<hex>` of the request's canonical JSON."""
    return key_of(canonical_json(request, backend, scope))


def folder_stamp(folder: Path) -> str:
    """A cache-key part for weights in a local folder: its files' names, sizes and times.

    A student trained again into the same folder gets a new stamp, so it is asked again
    instead of being given the previous student's replies."""
    stats = sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    )
    return "files:" + hashlib.sha256(repr(stats).encode()).hexdigest()[:16]


def cacheable(completion: Completion) -> bool:
    return bool(completion.text.strip()) and completion.finish_reason not in UNCACHEABLE_FINISH


class ResponseCache:
    """Reads and writes replies in the store's `responses` table."""

    def __init__(self, store: CallStore) -> None:
        self.store = store

    def get(self, key: str) -> Completion | None:
        row = self.store.db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, latency, backend, model,"
            " reasoning, reasoning_tokens FROM responses WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        text, finish, pt, ct, latency, backend, model, reasoning, reasoning_tokens = row
        return Completion(
            text,
            finish,
            pt,
            ct,
            latency,
            backend,
            model,
            cached=True,
            reasoning=reasoning,
            reasoning_tokens=reasoning_tokens,
        )

    @staticmethod
    def row(key: str, canonical: str, completion: Completion) -> Row:
        """The write that stores a reply (see `cacheable`) under its request's key."""
        return (
            "INSERT OR REPLACE INTO responses (key, backend, model, request, text, finish_reason,"
            " prompt_tokens, completion_tokens, latency, created, reasoning, reasoning_tokens)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                completion.backend,
                completion.model,
                canonical,
                completion.text,
                completion.finish_reason,
                completion.prompt_tokens,
                completion.completion_tokens,
                completion.latency,
                time.time(),
                completion.reasoning,
                completion.reasoning_tokens,
            ),
        )


@dataclass(frozen=True)
class CacheModelStats:
    backend: str
    model: str
    replies: int
    tokens: int


@dataclass(frozen=True)
class CacheStats:
    path: str
    size_bytes: int
    replies: int
    by_model: list[CacheModelStats]


def cache_stats(store: CallStore) -> CacheStats:
    """Replies and tokens held per backend and model (for `mapd cache stats`)."""
    rows = store.db.execute(
        "SELECT backend, model, COUNT(*), SUM(prompt_tokens + completion_tokens)"
        " FROM responses GROUP BY backend, model ORDER BY COUNT(*) DESC"
    ).fetchall()
    by_model = [CacheModelStats(b, m, n, t or 0) for b, m, n, t in rows]
    size = sum(p.stat().st_size for p in store.path.parent.glob(store.path.name + "*"))
    return CacheStats(str(store.path), size, sum(s.replies for s in by_model), by_model)


def clear_cache(store: CallStore, model: str | None = None) -> int:
    """Delete cached replies (all, or one model's); return how many. The ledger is kept."""
    if model is None:
        cur = store.db.execute("DELETE FROM responses")
    else:
        cur = store.db.execute("DELETE FROM responses WHERE model = ?", (model,))
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return cur.rowcount

"""open_clients: one client per endpoint of a stage, sharing a store, budget and cache mode."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mapd.config import validate_config
from mapd.llm import BudgetExceeded, Request, ledger_totals, open_store
from mapd.stages.calls import open_clients
from mapd.testing.loopback import LoopbackServer


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as s:
        yield s


def config(server, **extra):
    teacher = {
        "base_url": server.base_url,
        "price": {"input_per_mtok": 1e6},
        "limits": {"concurrency": 1},
    }
    return validate_config(
        {
            "name": "t",
            "task": {"name": "gsm8k"},
            "student": {"model": "no/such-student-is-loaded"},
            "teachers": [
                {"name": "gpt", "model": "m1", **teacher},
                {"name": "gem", "model": "m2", **teacher},
            ],
            **extra,
        }
    )


def test_clients_per_teacher_and_student_share_store_and_ledger(server, tmp_path):
    cfg = config(server)

    async def go():
        async with open_clients(
            cfg, tmp_path / "run", "teach", [*cfg.teachers, cfg.student]
        ) as clients:
            assert set(clients) == {"gpt", "gem", cfg.student.name}
            for name in ("gpt", "gem"):
                results = await clients[name].complete_many([Request.user("q")])
                assert results[0].text == f"[m{'1' if name == 'gpt' else '2'}] reply to: q"

    asyncio.run(go())  # the student's model is never loaded: backends are lazy
    with open_store() as store:
        rows = ledger_totals(store, tmp_path / "run")
    assert [(r.stage, r.endpoint, r.calls) for r in rows] == [
        ("teach", "gpt", 1),
        ("teach", "gem", 1),
    ]


def test_the_budget_spans_endpoints_and_invocations(server, tmp_path):
    cfg = config(server, budget={"usd": 3.0})  # $1 per prompt token, 1 token per prompt

    async def go(prompts):
        async with open_clients(
            cfg, tmp_path / "run", "teach", [*cfg.teachers, cfg.student]
        ) as clients:
            await clients["gpt"].complete_many([Request.user(p) for p in prompts[:2]])
            await clients["gem"].complete_many([Request.user(p) for p in prompts[2:]])

    with pytest.raises(BudgetExceeded):
        asyncio.run(go(["a", "b", "c", "d"]))
    assert len(server.requests) == 3
    with pytest.raises(BudgetExceeded):  # a new invocation remembers the spend
        asyncio.run(go(["e", "f", "g", "h"]))
    assert len(server.requests) == 3


def test_cache_mode_comes_from_the_config(server, tmp_path):
    cfg = config(server, cache="off")

    async def go():
        async with open_clients(cfg, tmp_path, "s", cfg.teachers) as clients:
            await clients["gpt"].complete_many([Request.user("same")])

    asyncio.run(go())
    asyncio.run(go())
    assert len(server.requests) == 2

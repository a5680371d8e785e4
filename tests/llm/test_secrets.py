"""API keys: read from the named variable, sent to the server, and found in no file or message."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mapd.errors import MapdError
from mapd.llm import Request, client_for
from mapd.testing.loopback import Fault

KEY = "sk-test-Zq8v3NwLr5TcYp1HsK2m"


def test_key_never_reaches_a_file_or_a_message(
    server, store, sleeps, make_teacher, monkeypatch, tmp_path, mapd_home, caplog
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MAPD_TEST_KEY", KEY)
    endpoint = make_teacher().model_copy(update={"api_key_env": "MAPD_TEST_KEY"})
    # one item fails with a body that echoes the Authorization header, as providers do
    server.reply = lambda req: (
        Fault("error", status=400, echo_auth=True)
        if req["messages"][-1]["content"] == "bad"
        else "ok"
    )

    async def go():
        client = client_for(endpoint, store=store, run=str(tmp_path / "run"), stage="s")
        try:
            results = await client.complete_many([Request.user(p) for p in ["a", "bad", "c"]])
            with pytest.raises(MapdError) as info:
                await client.complete(Request.user("bad"))
            return results, info.value
        finally:
            await client.aclose()

    results, error = asyncio.run(go())
    assert server.headers[0]["authorization"] == f"Bearer {KEY}"  # the key was really used
    failed = results[1]
    assert not failed.ok and "incorrect API key provided: Bearer ***" in failed.error
    texts = [repr(results), str(error), repr(error), caplog.text]
    assert all(KEY not in text for text in texts)
    store.db.execute("PRAGMA wal_checkpoint(FULL)")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name.startswith("calls.sqlite") for p in files)
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path


def test_a_missing_key_names_the_variable(server, store, make_teacher, monkeypatch):
    monkeypatch.delenv("MAPD_MISSING_KEY", raising=False)
    endpoint = make_teacher().model_copy(update={"api_key_env": "MAPD_MISSING_KEY"})

    async def go():
        client = client_for(endpoint, store=store)
        await client.complete_many([Request.user("a")])

    with pytest.raises(MapdError, match="No key found: set MAPD_MISSING_KEY") as info:
        asyncio.run(go())
    assert "MAPD_MISSING_KEY" in info.value.hint
    assert server.requests == []


def test_no_key_variable_sends_a_dummy_key(server, store, make_teacher):
    async def go():
        client = client_for(make_teacher(), store=store)
        try:
            return await client.complete(Request.user("a"))
        finally:
            await client.aclose()

    assert asyncio.run(go()).text
    assert server.headers[0]["authorization"] == "Bearer none"

"""The response cache: keys, what is never stored, modes, and two processes sharing one file."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from mapd.llm import Request, cache_stats, clear_cache, client_for, open_store, request_key
from mapd.llm.store import DB_NAME
from mapd.testing.loopback import Fault


def run_batch(endpoint, store, requests, cache_mode="use"):
    async def go():
        client = client_for(endpoint, store=store, cache_mode=cache_mode)
        try:
            return await client.complete_many(requests)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_key_is_tagged_and_covers_every_field():
    base = Request.user("hi", model="m", temperature=0.5, top_p=0.9, max_tokens=10, seed=1)
    key = request_key(base, "openai", "http://a/v1")
    assert key.startswith("sha256:") and len(key) == len("sha256:") + 64
    assert request_key(base.replace(tag="q7"), "openai", "http://a/v1") == key
    variants = [
        request_key(base, "transformers", "http://a/v1"),
        request_key(base, "openai", "http://b/v1"),
        *(
            request_key(base.replace(**{field: value}), "openai", "http://a/v1")
            for field, value in [
                ("model", "m2"),
                ("temperature", 0.6),
                ("top_p", 0.8),
                ("max_tokens", 11),
                ("seed", 2),
                ("sample", 1),
                ("stop", ("\n",)),
                ("messages", ({"role": "user", "content": "hi!"},)),
            ]
        ),
    ]
    assert len(set(variants)) == len(variants) and key not in variants


def test_a_second_identical_run_sends_nothing(server, store, make_teacher):
    requests = [Request.user(f"q{i}") for i in range(20)]
    first = run_batch(make_teacher(), store, requests)
    assert len(server.requests) == 20 and not any(r.completion.cached for r in first)
    second = run_batch(make_teacher(), store, requests)
    assert len(server.requests) == 20
    assert all(r.completion.cached for r in second)
    assert [r.text for r in second] == [r.text for r in first]


def test_samples_are_cached_separately(server, store, make_teacher):
    requests = [Request.user("q", sample=k) for k in range(3)]
    run_batch(make_teacher(), store, requests)
    assert len(server.requests) == 3


def test_errors_and_empty_replies_are_never_cached(server, store, sleeps, make_teacher):
    server.faults.extend([Fault("empty"), Fault.error(400)])  # an empty reply is retried
    endpoint = make_teacher(concurrency=1)
    (first,) = run_batch(endpoint, store, [Request.user("a")])
    assert not first.ok and "HTTP 400" in first.error
    assert cache_stats(store).replies == 0
    (second,) = run_batch(endpoint, store, [Request.user("a")])
    assert second.ok and len(server.requests) == 3
    assert cache_stats(store).replies == 1


def test_refresh_sends_again_and_off_writes_nothing(server, store, make_teacher):
    requests = [Request.user("a")]
    run_batch(make_teacher(), store, requests)
    server.reply = lambda req: "new text"
    (refreshed,) = run_batch(make_teacher(), store, requests, cache_mode="refresh")
    assert refreshed.text == "new text" and len(server.requests) == 2
    (used,) = run_batch(make_teacher(), store, requests)
    assert used.text == "new text" and used.completion.cached
    run_batch(make_teacher(), store, [Request.user("b")], cache_mode="off")
    run_batch(make_teacher(), store, [Request.user("b")], cache_mode="off")
    assert len(server.requests) == 4 and cache_stats(store).replies == 1


def test_stats_and_clear(server, store, make_teacher):
    run_batch(make_teacher(), store, [Request.user(f"q{i}") for i in range(3)])
    stats = cache_stats(store)
    assert stats.replies == 3 and stats.by_model[0].model == "fake-model"
    assert stats.size_bytes > 0
    assert clear_cache(store, model="other") == 0
    assert clear_cache(store) == 3
    assert cache_stats(store).replies == 0


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from mapd.config import Limits, ModelEndpoint
    from mapd.llm import Request, client_for, open_store

    async def main():
        endpoint = ModelEndpoint(name="t", model="m", base_url=sys.argv[1],
                                 limits=Limits(concurrency=8))
        with open_store() as store:
            client = client_for(endpoint, store=store, run="shared", stage="s")
            results = await client.complete_many([Request.user(f"q{i}") for i in range(60)])
            await client.aclose()
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        print(sum(r.completion.cached for r in results))

    asyncio.run(main())
    """
)


def test_two_processes_share_one_cache_file(store, mapd_home):
    from mapd.testing.loopback import LoopbackServer

    with LoopbackServer(latency=0.02) as server:
        env = {**os.environ, "MAPD_HOME": str(mapd_home)}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, server.base_url],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
        for p, (_out, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err
        sent = len(server.requests)
        assert 60 <= sent <= 120  # overlapping requests may both be sent, never lost
        assert cache_stats(store).replies == 60
        calls = store.db.execute("SELECT COUNT(*) FROM calls WHERE run = 'shared'").fetchone()
        assert calls == (120,)
        # a third process finds everything cached
        third = subprocess.run(
            [sys.executable, "-c", WORKER, server.base_url],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert third.returncode == 0, third.stderr
        assert third.stdout.strip() == "60" and len(server.requests) == sent
    assert (mapd_home / DB_NAME).is_file()


def test_store_in_an_unwritable_place_is_a_user_error(tmp_path):
    from mapd.errors import MapdError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MapdError, match="cannot open the call database"):
        open_store(blocker / "sub" / "calls.sqlite")

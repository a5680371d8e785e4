"""A server that drops handshakes stalls no request for long, and each stall is counted.

The slow test: 2,000 requests at concurrency 64 against `mapd.testing.overloaded`, 100 ms per reply, three
runs alternating with bare aiohttp on the same server (what the machine allows now).
Before the client gave up stalled connections, a request whose handshake or request bytes
the server's full queue dropped waited for the kernel's retransmits, up to the whole
120 s timeout. The fast test: one connection stalls at a server whose queue of one is full;
the ledger and `mapd ledger` count it.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from mapd.config import Limits, ModelEndpoint
from mapd.llm import Request, client_for, run_id
from mapd.llm.openai_backend import STALL_TIMEOUT
from mapd.testing.overloaded import OverloadedServer, bare_aiohttp, handler, through_mapd

RUNS = 3


@pytest.mark.slow
def test_an_overloaded_server_stalls_no_request_for_long(store):
    mapd_runs, bare_runs = [], []
    with OverloadedServer(latency=0.1) as server:
        for run in range(RUNS):
            mapd_runs.append(asyncio.run(through_mapd(server.base_url, store, str(run))))
            bare_runs.append(asyncio.run(bare_aiohttp(server.base_url, f"bare{run}")))
    # bare aiohttp stalls too at times; its best run is the machine
    floor = min(run["wall_s"] for run in bare_runs)
    report = f"mapd {mapd_runs}; bare aiohttp {bare_runs}"
    for run in mapd_runs:
        assert run["wall_s"] < 3 * floor, report
        assert run["slowest_s"] < 4 * STALL_TIMEOUT < Limits().timeout / 4, report


class QueueOfOne(ThreadingHTTPServer):
    """listen(0): the kernel queues one finished handshake and drops the SYNs after it."""

    request_queue_size = 0


MAPD_SCRIPT = Path(sys.executable).with_name("mapd")  # the console script pip installed


@pytest.fixture
def queue_full_server(monkeypatch):
    """A server whose queue of one is filled by a connection before it accepts anything: a
    first handshake is dropped. The client's first retry wait lets the server accept the
    filler and start serving, so the second attempt is answered. Yields its base URL."""
    server = QueueOfOne(("127.0.0.1", 0), handler(latency=0.0))
    filler = socket.create_connection(server.server_address)
    accepted: list[socket.socket] = []

    async def retry_wait(seconds: float) -> None:  # the server starts taking connections
        if not accepted:
            accepted.append(server.socket.accept()[0])  # the filler: the queue has room again
            threading.Thread(target=server.serve_forever, daemon=True).start()

    monkeypatch.setattr("mapd.llm.limits.backoff_sleep", retry_wait)
    yield f"http://127.0.0.1:{server.server_port}/v1"
    if accepted:
        server.shutdown()
    server.server_close()
    for sock in [filler, *accepted]:
        sock.close()


def test_a_stalled_connection_is_counted_in_the_ledger_and_shown_by_mapd_ledger(
    store, tmp_path, monkeypatch, capsys, queue_full_server
):
    """The first attempt's handshake is dropped and given up after the stall timeout; the
    second attempt is answered."""
    monkeypatch.setattr("mapd.llm.openai_backend.STALL_TIMEOUT", 0.5)  # 5 s in real use
    run_dir = tmp_path / "run"
    endpoint = ModelEndpoint(name="busy", model="m", base_url=queue_full_server)

    async def ask():
        client = client_for(endpoint, store=store, run=run_id(run_dir), stage="teach")
        results = await client.complete_many([Request.user("What is 2 + 3?")], desc="teach")
        await client.aclose()
        return results

    (result,) = asyncio.run(ask())
    assert result.ok and (result.attempts, result.stalls, result.timeouts) == (2, 1, 0)
    assert "stalled 1" in capsys.readouterr().err  # the progress line counts it per call
    row = store.db.execute("SELECT ok, attempts, timeouts, stalls FROM calls").fetchall()
    assert row == [(1, 2, 0, 1)]
    shown = subprocess.run(
        [str(MAPD_SCRIPT), "ledger", str(run_dir)], capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr
    header, teach, total = shown.stdout.splitlines()[:3]
    assert header.split()[-4:] == ["timeouts", "stalled", "cost", "$"]
    assert teach.split()[-3:-1] == ["0", "1"] and total.split()[-3:-1] == ["0", "1"]


def test_a_connect_stalled_under_a_timeout_below_the_stall_timeout_is_a_stall(
    store, queue_full_server
):
    """limits.timeout of 1 s, below STALL_TIMEOUT: the dropped handshake is still given up
    before the whole attempt times out, so it counts as a stall, not a timeout, and the
    request's slot is not held one more timeout for a request the server never got."""
    timeout = 1.0
    endpoint = ModelEndpoint(
        name="busy", model="m", base_url=queue_full_server, limits=Limits(timeout=timeout)
    )

    async def ask():
        client = client_for(endpoint, store=store, run="short-timeout", stage="teach")
        results = await client.complete_many([Request.user("What is 2 + 3?")], progress=False)
        await client.aclose()
        return results

    started = time.monotonic()
    (result,) = asyncio.run(ask())
    waited = time.monotonic() - started
    assert result.ok and (result.attempts, result.stalls, result.timeouts) == (2, 1, 0)
    assert waited < 1.5 * timeout  # a timeout and a held slot: about 2 timeouts


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
def test_request_bytes_unacknowledged_under_a_short_timeout_are_given_up_before_it(
    store, monkeypatch
):
    """limits.timeout of 1 s: the connections' TCP_USER_TIMEOUT is half of it, not the 5 s
    STALL_TIMEOUT, so a request the server's kernel never acknowledged is a stall, given up
    before the attempt times out (as a dropped handshake is, above)."""
    from mapd.llm import openai_backend
    from mapd.testing.loopback import LoopbackServer

    made, original = [], openai_backend.stall_limited_socket

    def recorded(addr_info, stall):  # each connection's option as it is made
        sock = original(addr_info, stall)
        made.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
        return sock

    monkeypatch.setattr(openai_backend, "stall_limited_socket", recorded)
    with LoopbackServer() as server:
        for timeout, expected_ms in ((1.0, 500), (60.0, int(STALL_TIMEOUT * 1000))):
            endpoint = ModelEndpoint(
                name="t", model="m", base_url=server.base_url, limits=Limits(timeout=timeout)
            )

            async def ask(endpoint=endpoint, timeout=timeout):
                client = client_for(endpoint, store=store, run=f"t{timeout}", stage="teach")
                results = await client.complete_many(
                    [Request.user(f"hi {timeout}")], progress=False
                )
                await client.aclose()
                return results

            made.clear()
            (result,) = asyncio.run(ask())
            assert result.ok and set(made) == {expected_ms}

"""An overloaded OpenAI-compatible server: the standard library's threaded HTTP server, backlog 5.

    python -m mapd.testing.overloaded --latency 0.1     # prints the port, serves until killed

`http.server.ThreadingHTTPServer` as it comes: a listen backlog of 5, HTTP/1.0 (one
connection per request), a thread per connection. With 64 clients connecting at once the
kernel's accept queue overflows and handshakes are dropped, as with a busy local server
(Ollama, llama.cpp) or one behind a saturated load balancer. Each chat request is answered
after `latency` seconds with `chat_body`'s reply. A client that waits for the kernel's
SYN retransmits (1, 3, 7, 15 s ...) instead of trying again stalls here; `mapd.testing`
tests and `bench/overload_stall.py` use it to show that the client does not. It runs in a
process of its own, so that its threads do not compete with the client's event loop for
the interpreter. `through_mapd` and `bare_aiohttp` send them both the same load: N chat
requests at CONCURRENCY (ideal wall time N x latency / CONCURRENCY).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp

from mapd.config import Limits, ModelEndpoint
from mapd.llm import CallStore, Request, client_for
from mapd.testing.loopback import chat_body

N, CONCURRENCY = 2000, 64


def handler(latency: float) -> type[BaseHTTPRequestHandler]:
    class ChatHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 -- the name http.server looks up
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(latency)
            body = chat_body(request, "The answer is 5.")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # one line per request would flood the terminal

    return ChatHandler


class OverloadedServer:
    """Runs the server in a child process on 127.0.0.1; `base_url` once started."""

    def __init__(self, latency: float = 0.1) -> None:
        self.latency = latency
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> OverloadedServer:
        command = [sys.executable, "-m", "mapd.testing.overloaded", "--latency", str(self.latency)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


async def through_mapd(base_url: str, store: CallStore, tag: str) -> dict[str, float]:
    """The load through mapd's client (cache and ledger in `store`, limits), with requests
    that `tag` makes new: wall time, the slowest request's latency, the stalls given up and
    the retries. Every request must be answered."""
    endpoint = ModelEndpoint(
        name="busy", model="m", base_url=base_url, limits=Limits(concurrency=CONCURRENCY)
    )
    client = client_for(endpoint, store=store, run="overload", stage="load")
    requests = [Request.user(f"question {tag}.{i}") for i in range(N)]
    started = time.perf_counter()
    results = await client.complete_many(requests, progress=False)
    wall = time.perf_counter() - started
    await client.aclose()
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return {
        "wall_s": wall,
        "slowest_s": max(r.completion.latency for r in results),
        "stalls": sum(r.stalls for r in results),
        "retries": sum(r.attempts for r in results) - N,
    }


async def bare_aiohttp(base_url: str, tag: str) -> dict[str, float]:
    """The same load with aiohttp's defaults, no mapd: wall time and the slowest request."""
    gate = asyncio.Semaphore(CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    slowest = 0.0
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal slowest
            async with gate:
                body = {"model": "m", "messages": [{"role": "user", "content": f"{tag} {i}"}]}
                sent = time.perf_counter()
                async with session.post(base_url + "/chat/completions", json=body) as response:
                    await response.read()
                slowest = max(slowest, time.perf_counter() - sent)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(N)))
        return {"wall_s": time.perf_counter() - started, "slowest_s": slowest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per reply")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(args.latency))
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


if __name__ == "__main__":
    main()

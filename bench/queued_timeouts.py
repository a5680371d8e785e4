"""Benchmark: requests queued past the timeout at a server that answers one at a time.

    python bench/queued_timeouts.py            # a few seconds

As `transformers serve` and llama.cpp's server do, the loopback server here works through
one request at a time (100 ms each) and keeps working on a request whose client gave up.
24 distinct requests at concurrency 8 with `limits.timeout` 0.65 s: the last two of each
group of eight wait longer than the timeout. Printed: requests sent per distinct body
(the ideal is 1.0), items done, timeouts counted, and how many copies reached the server
while an earlier copy of the same body was still being worked on (should be 0). Retry
waits are skipped so that only the timeout rule is measured. Writes
bench/results/queued_timeouts.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BODIES, CONCURRENCY, LATENCY, TIMEOUT = 24, 8, 0.1, 0.65


def main() -> None:
    os.environ["MAPD_HOME"] = tempfile.mkdtemp(prefix="mapd-bench-")
    import mapd.llm.limits as limits
    from mapd.config import Limits, ModelEndpoint
    from mapd.llm import CallsStopped, Request, client_for, open_store
    from mapd.testing.loopback import LoopbackServer

    async def no_wait(seconds: float) -> None:
        return None

    limits.backoff_sleep = no_wait  # type: ignore[assignment]
    done_at: dict[str, list[float]] = {}

    def reply(request: dict[str, Any]) -> str:
        done_at.setdefault(request["messages"][-1]["content"], []).append(time.monotonic())
        return "The answer is 4."

    with LoopbackServer(reply=reply, latency=LATENCY, serial=True) as server:
        endpoint = ModelEndpoint(
            name="serial",
            model="m",
            base_url=server.base_url,
            limits=Limits(concurrency=CONCURRENCY, max_attempts=6, timeout=TIMEOUT),
        )

        async def run() -> list[Any]:
            with open_store() as store:
                client = client_for(endpoint, store=store)
                requests = [Request.user(f"question {i}") for i in range(BODIES)]
                try:
                    return await client.complete_many(requests, progress=False)
                except CallsStopped as stopped:
                    return stopped.results
                finally:
                    await client.aclose()

        started = time.monotonic()
        results = asyncio.run(run())
        seconds = time.monotonic() - started
    arrivals: dict[str, list[float]] = {}
    for request, at in zip(server.requests, server.arrivals, strict=True):
        arrivals.setdefault(request["messages"][-1]["content"], []).append(at)
    while_in_flight = sum(
        later < finished
        for body, times in arrivals.items()
        for later, finished in zip(times[1:], done_at.get(body, []), strict=False)
    )
    figures = {
        "requests": len(server.requests),
        "requests_per_body": len(server.requests) / BODIES,
        "done": sum(r.ok for r in results),
        "timeouts_counted": sum(r.timeouts for r in results),
        "sent_while_in_flight": while_in_flight,
        "seconds": round(seconds, 2),
    }
    print(
        f"{figures['requests']} requests for {BODIES} bodies "
        f"({figures['requests_per_body']:.2f} per body, ideal 1.00), "
        f"{figures['done']}/{BODIES} done, {figures['timeouts_counted']} timeouts counted, "
        f"{while_in_flight} sent while the server still worked on the same body, {seconds:.1f} s"
    )
    out = Path(__file__).parent / "results" / "queued_timeouts.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""Overloaded server: mapd's client against bare aiohttp on a server that drops handshakes.

    python bench/overload_stall.py             # 5 rounds of 2,000 requests each, alternating

The server is `mapd.testing.overloaded` (the standard library's ThreadingHTTPServer,
listen backlog 5, 100 ms per reply, one connection per request); 2,000 chat requests at
concurrency 64 go through mapd's client (cache, ledger in a fresh store, limits) and
through bare aiohttp with its defaults, alternating run by run. Reported per run: wall
time, the slowest attempt's latency, the stalls mapd gave up and retried
(`CallResult.stalls`), and the kernel's listen-queue overflows during the run. Ideal
wall time is 2,000 x 0.1 s / 64 = 3.1 s. JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def listen_overflows() -> int:
    """The kernel's TcpExt ListenOverflows counter (Linux), or -1."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return -1
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.environ["MAPD_HOME"] = tempfile.mkdtemp(prefix="mapd-bench-")  # a fresh cache
    from mapd.llm import open_store
    from mapd.testing.overloaded import (
        CONCURRENCY,
        N,
        OverloadedServer,
        bare_aiohttp,
        through_mapd,
    )

    load = os.getloadavg()
    runs: dict[str, list[dict]] = {"mapd": [], "bare_aiohttp": []}
    with open_store() as store, OverloadedServer(latency=0.1) as server:
        for round_ in range(args.rounds):
            order = ("mapd", "bare_aiohttp") if round_ % 2 == 0 else ("bare_aiohttp", "mapd")
            for name in order:
                before = listen_overflows()
                if name == "mapd":
                    figures = asyncio.run(through_mapd(server.base_url, store, str(round_)))
                else:
                    figures = asyncio.run(bare_aiohttp(server.base_url, f"b{round_}"))
                figures["listen_overflows"] = listen_overflows() - before
                runs[name].append({k: round(v, 2) for k, v in figures.items()})
                print(f"round {round_ + 1} {name:>12}: {runs[name][-1]}", flush=True)
    medians = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    print(
        f"median wall: mapd {medians['mapd']:.1f} s, bare aiohttp {medians['bare_aiohttp']:.1f} s"
        f" (ideal {N * 0.1 / CONCURRENCY:.1f} s); worst: mapd "
        f"{max(r['wall_s'] for r in runs['mapd']):.1f} s, bare aiohttp "
        f"{max(r['wall_s'] for r in runs['bare_aiohttp']):.1f} s"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"overload_stall-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record = {
        "benchmark": "overload_stall",
        "requests": N,
        "concurrency": CONCURRENCY,
        "load_average_at_start": [round(x, 2) for x in load],
        "runs": runs,
        "median_wall_s": medians,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

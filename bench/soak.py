"""Soak: 20,000 teacher requests with 30% injected faults through the real teach stage.

    python bench/soak.py                        # about 2.5 minutes on 2 cores
    python bench/soak.py --requests 2000        # a quick look

A run folder holds synthetic mistakes; three scripted teachers on the loopback server write
feedback and a rationale for each (mistakes x 3 x 2 requests). 30% of the requests fail
with a mix of 429 with Retry-After, 500, 503, connection reset, no reply until the timeout,
malformed JSON, empty content and a reply cut off mid-body. Retry waits are shortened to
at most 10 ms. Printed: items lost (expected in the stage's files but missing) and
duplicated (an item twice in a file, a request answered successfully twice as counted by
the server, or a cache key paid twice in the ledger), both expected 0, and the wall time,
with its ratio to the same stage without faults. Writes bench/results/soak-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from mapd.config import load_config
from mapd.llm import limits
from mapd.records import Feedback, Mistake, Rationale
from mapd.rundir import read_jsonl, write_jsonl
from mapd.stages.pipeline import run_pipeline
from mapd.testing.faults import FaultyReplies, fault_mix
from mapd.testing.loopback import LoopbackServer

TEACHERS = ("alice", "bob", "carol")
RESULTS = Path(__file__).parent / "results"


def scripted(request: dict) -> str:
    question = request["messages"][-1]["content"].rsplit("Question: ", 1)[-1].split("\n")[0]
    return f"{request['model']} explains: {question}\nThe answer is 7."


async def short_backoff(seconds: float) -> None:
    await asyncio.sleep(min(seconds, 0.01))


def make_run(folder: Path, base_url: str, mistakes: int, timeout: float) -> Path:
    """A config and a run folder whose exam is done: `mistakes` synthetic mistakes."""
    run_dir = folder / "run"
    write_jsonl(
        run_dir / "mistakes.jsonl",
        (
            Mistake(
                question_id=f"m{i}",
                question=f"A shop sells {i} apples and {i + 3} pears. How many fruits?",
                answer=str(2 * i + 3),
                answer_type="number",
                student_output="The answer is 7.",
                student_answer="7",
            )
            for i in range(mistakes)
        ),
    )
    (folder / "unused.jsonl").write_text('{"question": "q", "answer": "1"}\n')
    limits_ = {"concurrency": 32, "max_attempts": 12, "timeout": timeout}
    config = {
        "name": "soak",
        "output_dir": str(run_dir),
        "task": {
            "name": "jsonl",
            "source": "local",
            "path": str(folder / "unused.jsonl"),
            "answer_type": "number",
        },
        "student": {"model": "student", "backend": "openai", "base_url": base_url},
        "teachers": [
            {"name": t, "model": f"{t}-model", "base_url": base_url, "limits": limits_}
            for t in TEACHERS
        ],
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_teach(folder: Path, rate: float, mistakes: int, timeout: float) -> dict:
    os.environ["MAPD_HOME"] = str(folder / "home")
    replies = FaultyReplies(scripted, rate=rate, seed=20, faults=fault_mix(hang=60.0))
    with LoopbackServer(reply=replies) as server:
        cfg = load_config(make_run(folder, server.base_url, mistakes, timeout))
        started = time.perf_counter()
        asyncio.run(run_pipeline(cfg, start="teach", until="teach"))
        seconds = time.perf_counter() - started
        attempts = len(server.requests)
    run_dir = folder / "run"
    feedback = read_jsonl(run_dir / "feedback.jsonl", Feedback)
    rationales = read_jsonl(run_dir / "rationales.jsonl", Rationale)
    expected = {f"m{i}|{t}" for i in range(mistakes) for t in TEACHERS}
    in_files = Counter(r.id for r in feedback) + Counter(r.id for r in rationales)
    with sqlite3.connect(folder / "home" / "calls.sqlite") as db:
        paid_twice = db.execute(
            "SELECT COUNT(*) FROM (SELECT key FROM calls WHERE ok = 1 AND cached = 0"
            " GROUP BY key HAVING COUNT(*) > 1)"
        ).fetchone()[0]
    return {
        "requests": 2 * len(expected),
        "attempts_sent": attempts,
        "faults_injected": sum(replies.injected.values()),
        "faults_by_kind": dict(sorted(replies.injected.items())),
        "lost": 2 * len(expected - set(in_files)) + sum(2 - n for n in in_files.values() if n < 2),
        "duplicated_in_files": sum(n - 2 for n in in_files.values() if n > 2),
        "answered_twice_by_server": sum(n - 1 for n in replies.duplicates().values()),
        "paid_twice_in_ledger": paid_twice,
        "seconds": round(seconds, 1),
        "files": {
            "feedback": (run_dir / "feedback.jsonl").read_bytes(),
            "rationales": (run_dir / "rationales.jsonl").read_bytes(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=0.3, help="share of requests that fail")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per attempt")
    parser.add_argument("--no-baseline", action="store_true", help="skip the fault-free run")
    args = parser.parse_args()
    limits.backoff_sleep = short_backoff  # the client looks it up on the module at each retry
    mistakes = -(-args.requests // (2 * len(TEACHERS)))
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        soak = run_teach(Path(tmp) / "faults", args.rate, mistakes, args.timeout)
        base = None if args.no_baseline else run_teach(Path(tmp) / "clean", 0.0, mistakes, 1.0)
    soak_files = soak.pop("files")
    same = base is not None and base.pop("files") == soak_files
    duplicated = (
        soak["duplicated_in_files"]
        + soak["answered_twice_by_server"]
        + soak["paid_twice_in_ledger"]
    )
    print(
        f"{soak['requests']:,} requests, {soak['faults_injected']:,} faults injected "
        f"({soak['attempts_sent']:,} attempts sent): lost {soak['lost']}, duplicated {duplicated}; "
        f"{soak['seconds']} s"
    )
    print("faults:", ", ".join(f"{k} {v}" for k, v in soak["faults_by_kind"].items()))
    if base is not None:
        ratio = soak["seconds"] / base["seconds"]
        print(
            f"without faults: {base['seconds']} s; with faults {ratio:.2f}x that; "
            f"files identical to the fault-free run: {same}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result = {
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
        "rate": args.rate,
        "timeout_s": args.timeout,
        "soak": soak,
        "lost": soak["lost"],
        "duplicated": duplicated,
        "baseline": base,
        "files_identical_to_baseline": same if base is not None else None,
        "seconds_vs_baseline": round(soak["seconds"] / base["seconds"], 2) if base else None,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    sys.exit(0 if soak["lost"] == 0 and duplicated == 0 else 1)


if __name__ == "__main__":
    main()

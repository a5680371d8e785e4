"""Benchmark: the teach and review stages live against through the batch API, on loopback servers.

    python bench/batch_cost.py                   # 2,000 mistakes x 3 teachers (24,000 calls a mode)
    python bench/batch_cost.py --mistakes 500    # smaller, on a busy machine

The same mistakes are taught and reviewed by three teachers (each teacher: feedback and a
rationale per mistake; each rationale reviewed by the two others), once through live
calls to the loopback OpenAI-compatible server and once through the OpenAI Batch API of the
loopback batch server (both separate processes, so the CPU time measured is the client's).
Per mode: HTTP requests sent, calls answered, cost from the ledger, client CPU time per
call and wall time. The batch cost must be `price.batch_discount` (0.5) of the live cost for
the same tokens. A re-run of the batch mode must send nothing. Writes
bench/results/batch_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PRICE = {"input_per_mtok": 2.5, "output_per_mtok": 10.0}
TEACHERS = ["gpt", "gemini", "llama"]


def start_server(module: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, f"http://127.0.0.1:{process.stdout.readline().strip()}"


def server_stats(root: str) -> dict:
    with urllib.request.urlopen(root + "/stats") as reply:
        return json.load(reply)


def write_mistakes(run_dir: Path, n: int) -> None:
    from mapd.records import Mistake
    from mapd.rundir import write_jsonl

    mistakes = [
        Mistake(
            question_id=f"m{i}",
            question=f"A shop sells {i + 3} apples a day for {i % 7 + 2} days. How many apples?",
            answer=str((i + 3) * (i % 7 + 2)),
            answer_type="number",
            student_output="I think it is 1. The answer is 1.",
            student_answer="1",
        )
        for i in range(n)
    ]
    write_jsonl(run_dir / "mistakes.jsonl", mistakes)


def config(run_dir: Path, base_url: str, batch: bool):
    from mapd.config import validate_config

    teachers = [
        {
            "name": name,
            "model": f"{name}-model",
            "base_url": base_url,
            "batch": batch,
            "price": PRICE,
            "limits": {"concurrency": 64, "poll_interval": 0.05},
        }
        for name in TEACHERS
    ]
    return validate_config(
        {
            "name": "bench",
            "output_dir": str(run_dir),
            "task": {"name": "gsm8k"},
            "student": {"model": "student"},
            "teachers": teachers,
            "review": {"require_correct_answer": False},
        }
    )


async def teach_and_review(cfg, run_dir: Path) -> None:
    from mapd.stages import review, teach

    await teach.run(cfg, run_dir)
    await review.run(cfg, run_dir)


def run_mode(root: Path, base_url: str, batch: bool, n: int) -> dict:
    from mapd.llm import ledger_totals, open_store

    run_dir = root / ("batch" if batch else "live")
    write_mistakes(run_dir, n)
    cfg = config(run_dir, base_url, batch)
    server_root = base_url.removesuffix("/v1")
    before = server_stats(server_root)
    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(teach_and_review(cfg, run_dir))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    after = server_stats(server_root)
    with open_store() as store:
        rows = ledger_totals(store, run_dir)
    calls = sum(r.calls for r in rows)
    sent_key = "http_requests" if batch else "requests"
    return {
        "calls": calls,
        "http_requests": after[sent_key] - before[sent_key],
        "batches": after.get("batches", 0) - before.get("batches", 0),
        "cost_usd": round(sum(r.cost for r in rows), 6),
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "completion_tokens": sum(r.completion_tokens for r in rows),
        "client_cpu_ms_per_call": round(1000 * cpu / calls, 3),
        "wall_s": round(wall, 2),
        "run_dir": run_dir,
        "cfg": cfg,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mistakes", type=int, default=2000)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="mapd-bench-batch-")
    os.environ["MAPD_HOME"] = home
    live_server, live_root = start_server("mapd.testing.loopback")
    batch_server, batch_root = start_server("mapd.testing.batch_server", "--tick", "1")
    try:
        root = Path(home)
        live = run_mode(root, live_root + "/v1", False, args.mistakes)
        batch = run_mode(root, batch_root + "/v1", True, args.mistakes)
        before, rerun_s = server_stats(batch_root), time.perf_counter()
        asyncio.run(teach_and_review(batch["cfg"], batch["run_dir"]))  # a re-run: all cached
        rerun_s = time.perf_counter() - rerun_s
        rerun_sent = server_stats(batch_root)["http_requests"] - before["http_requests"]
    finally:
        for process in (live_server, batch_server):
            process.terminate()
            process.wait()
    for mode in (live, batch):
        del mode["run_dir"], mode["cfg"]
    ratio = batch["cost_usd"] / live["cost_usd"]
    figures = {
        "mistakes": args.mistakes,
        "teachers": len(TEACHERS),
        "live": live,
        "batch": batch,
        "cost_ratio_batch_to_live": round(ratio, 4),
        "cpu_ratio_batch_to_live": round(
            batch["client_cpu_ms_per_call"] / live["client_cpu_ms_per_call"], 3
        ),
        "batch_rerun_http_requests": rerun_sent,
        "batch_rerun_s": round(rerun_s, 2),
    }
    for name, mode in (("live", live), ("batch", batch)):
        print(
            f"{name:>5}: {mode['calls']:,} calls, {mode['http_requests']:,} HTTP requests"
            f" ({mode['batches']} batches), ${mode['cost_usd']:.4f},"
            f" {mode['client_cpu_ms_per_call']:.3f} ms client CPU per call, {mode['wall_s']} s"
        )
    print(f"cost batch/live: {ratio:.4f} (price.batch_discount 0.5)")
    print(f"client CPU per call batch/live: {figures['cpu_ratio_batch_to_live']}")
    print(f"batch re-run: {rerun_sent} HTTP requests, {rerun_s:.1f} s")
    assert abs(ratio - 0.5) < 1e-6, ratio
    assert batch["prompt_tokens"] == live["prompt_tokens"], "the two modes sent different prompts"
    assert rerun_sent == 0
    out = Path(__file__).with_name("results") / "batch_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

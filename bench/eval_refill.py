"""Evaluation speed: greedy batches refilled as rows end, against one `generate` per batch.

    python bench/eval_refill.py RUN_DIR                  # the run's trained student
    python bench/eval_refill.py RUN_DIR --base --n 32    # the untrained student
    python bench/eval_refill.py runs/shuffled/svamp-quality-paper --n 64 --batch-size 16

Asks the first `--n` evaluation questions of a finished run (its own rationale-task prompt,
greedy, its `eval.max_tokens`) of its trained student, in-process with no cache, twice in
one process: once with one `generate` call per batch (a batch waits for its longest reply)
and once refilled every `--every` new tokens (the in-process backend's default). Prints the
wall time of each, their ratio, the generated tokens, how many replies are identical and
each mode's accuracy. JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


async def ask(endpoint, requests, every: int) -> tuple[float, list]:
    from mapd.llm import client_for
    from mapd.llm.hf_backend import HFBackend

    HFBackend.refill_every = every
    client = client_for(endpoint, store=None)
    started = time.perf_counter()
    results = await client.complete_many(requests)
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder with config.yaml")
    parser.add_argument("--n", type=int, default=64, help="questions asked")
    parser.add_argument("--batch-size", type=int, help="rows generated together")
    parser.add_argument("--every", type=int, default=32, help="new tokens between refills")
    parser.add_argument("--base", action="store_true", help="the untrained student")
    args = parser.parse_args()
    if not (args.run_dir / "config.yaml").is_file():
        parser.error(f"{args.run_dir / 'config.yaml'} not found: give a run folder")

    from mapd.config import load_config
    from mapd.prompts import Prompts
    from mapd.stages.evaluate import eval_questions, trained_student
    from mapd.stages.exam import grade, rationale_request

    cfg = load_config(args.run_dir / "config.yaml")
    endpoint = cfg.student if args.base else trained_student(cfg, args.run_dir)
    if args.batch_size:
        endpoint = endpoint.model_copy(update={"batch_size": args.batch_size})
    questions = eval_questions(cfg)[: args.n]
    prompts = Prompts(cfg.prompts)
    plain = not getattr(endpoint, "chat_template", True)
    requests = [
        rationale_request(prompts, q, plain=plain, temperature=0.0, max_tokens=cfg.eval.max_tokens)
        for q in questions
    ]
    asyncio.run(ask(endpoint, requests[:1], 0))  # load the model before timing
    figures = {}
    outputs = {}
    for mode, every in (("whole", 0), ("refilled", args.every)):
        seconds, results = asyncio.run(ask(endpoint, requests, every))
        bad = [r for r in results if not r.ok]
        if bad:
            sys.exit(f"{mode}: {len(bad)} requests failed: {bad[0].error}")
        outputs[mode] = [r.text for r in results]
        tokens = sum(r.completion.completion_tokens for r in results)
        correct = sum(grade(q, r.text).correct for q, r in zip(questions, results, strict=True))
        figures[mode] = {
            "seconds": round(seconds, 1),
            "generated_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "correct": correct,
        }
        print(f"{mode:<9} {seconds:7.1f} s  {tokens:6d} tokens  {correct}/{len(questions)} correct")
    same = sum(a == b for a, b in zip(outputs["whole"], outputs["refilled"], strict=True))
    ratio = round(figures["whole"]["seconds"] / figures["refilled"]["seconds"], 2)
    print(
        f"refilled every {args.every} tokens: {ratio}x faster; "
        f"{same}/{len(requests)} replies identical (batch size {endpoint.batch_size})"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "eval_refill",
        "run_dir": str(args.run_dir),
        "model": endpoint.model,
        "n": len(requests),
        "batch_size": endpoint.batch_size,
        "every": args.every,
        "max_tokens": cfg.eval.max_tokens,
        "results": figures,
        "speedup": ratio,
        "identical": same,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = RESULTS / f"eval_refill-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

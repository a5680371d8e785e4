"""Diagnosis: how well trained students fit their own training data, per task, in fp32.

    python bench/train_fit.py RUN_DIR MODEL_DIR [MODEL_DIR ...]
    python bench/train_fit.py runs/chat/svamp-quality-paper runs/chat/svamp-quality-paper/student/merged runs/chat/svamp-quality-paper-reference-fp32/merged

Scores a seeded sample of RUN_DIR's `dataset/train.jsonl` (96 examples by default) with
each merged model, with mapd's tokenization and masking in the run's prompt format, and
prints each task's cross-entropy over its trained tokens. Two students trained on the
same data for the same number of steps can then be compared on what they learned, without
the noise of a 200-question accuracy: this is how the stock `Trainer` was seen to fit the
SVAMP release data better than `mapd train` (bench/svamp_reference.py).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mapd.config import load_config
from mapd.records import Example
from mapd.rundir import read_jsonl
from mapd.stages.train.tokenize import IGNORE, TASK_IDS, encode_example


def task_ce(
    model_dir: Path, examples: list[Example], prompt_format: str, max_length: int
) -> dict[str, float]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sums, counts = [0.0, 0.0], [0, 0]
    for example in examples:
        row = encode_example(example, tokenizer, prompt_format, max_length)
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([row.input_ids])).logits[0, :-1]
        targets = torch.tensor(row.labels[1:])
        ce = torch.nn.functional.cross_entropy(
            logits.float(), targets, ignore_index=IGNORE, reduction="sum"
        )
        sums[row.task] += float(ce)
        counts[row.task] += int((targets != IGNORE).sum())
    return {task: sums[i] / max(counts[i], 1) for task, i in TASK_IDS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder with dataset/train.jsonl")
    parser.add_argument("models", type=Path, nargs="+", help="merged model folders")
    parser.add_argument("--n", type=int, default=96, help="examples scored (seeded sample)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    needed = [args.run_dir / "config.yaml", args.run_dir / "dataset" / "train.jsonl"]
    needed += [model / "config.json" for model in args.models]
    for path in needed:
        if not path.is_file():
            parser.error(f"{path} not found: give a built run folder, then merged model folders")
    cfg = load_config(args.run_dir / "config.yaml")
    examples = read_jsonl(args.run_dir / "dataset" / "train.jsonl", Example)
    random.Random(args.seed).shuffle(examples)
    examples = examples[: args.n]
    for model_dir in args.models:
        ce = task_ce(model_dir, examples, cfg.train.prompt_format, cfg.train.max_length)
        print(f"{model_dir}: " + ", ".join(f"{task} CE {v:.3f}" for task, v in ce.items()))


if __name__ == "__main__":
    main()

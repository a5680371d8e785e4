"""Diagnosis: train on a run's dataset with a stock transformers Trainer, evaluate like `mapd eval`.

    python bench/svamp_reference.py runs/svamp-quality-paper --precision fp32
    python bench/svamp_reference.py RUN_DIR --precision bf16 --set eval.limit=200 --out runs/ref
    python bench/svamp_reference.py RUN_DIR --batches length-blocks   # transformers' grouping

The issue's hand-written version of the paper's recipe took SmolLM2 from 3.5 % to 18.5 % on
the first 200 held-out SVAMP problems; `mapd train` on the same release data does not get
there (bench/svamp_quality.py). This script separates mapd's trainer from its data and its
evaluation. It reads RUN_DIR's config and `dataset/train.jsonl` (run
bench/svamp_quality.py first) and keeps everything the same: the examples, mapd's
tokenization and exact masking (chat or plain format, from the config), LoRA, learning
rate, schedule, epochs, batch and accumulation, seed. Only the trainer differs: the stock
`Trainer` with the model's own loss (one token-mean cross-entropy over both tasks, where
`mapd train` weighs each task's mean by alpha), random batches (mapd groups them by
length; `--batches length-blocks` uses transformers' own length grouping instead, which
mapd used until it shuffled the groups), and the precision given here. The merged model is then asked the same questions
with the same prompts and graded as `mapd eval` does; predictions and metrics go to
OUT/eval/reference/, next to the run's own eval/trained/ to compare.

About an hour of training on 2 cores in bf16, more in fp32; a finished training is reused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, set_seed

from mapd.config import RunConfig, load_config
from mapd.records import Example
from mapd.rundir import read_jsonl
from mapd.stages.evaluate import eval_questions, evaluate
from mapd.stages.train.collate import PadCollator
from mapd.stages.train.model import load_student, merge_adapter
from mapd.stages.train.tokenize import encode_examples


def train(cfg: RunConfig, examples: list[Example], out: Path, precision: str, batches: str) -> Path:
    """Train with the stock Trainer and merge; the merged model's folder."""
    merged = out / "merged"
    if (merged / "config.json").exists():
        print(f"{merged} exists: reusing it (delete it to train again)")
        return merged
    t = cfg.train
    set_seed(cfg.seed)
    model, tokenizer = load_student(cfg.student.model, t)
    encoded = encode_examples(examples, tokenizer, t.prompt_format, t.max_length, "drop")
    rows = [{"input_ids": r.input_ids, "labels": r.labels, "task": r.task} for r in encoded.rows]
    pad = PadCollator(pad_id=tokenizer.pad_token_id)
    bf16 = precision == "bf16"
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="no",
        logging_steps=10,
        report_to="none",
        bf16=bf16,
        use_cpu=bf16 and not torch.cuda.is_available(),
        dataloader_pin_memory=False,
        remove_unused_columns=False,  # the collator drops the task column itself
        train_sampling_strategy="group_by_length" if batches == "length-blocks" else "random",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        # the same padding as mapd's, without the task column the stock loss does not use
        data_collator=lambda features: {k: v for k, v in pad(features).items() if k != "task"},
    )
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    print(f"trained {len(rows)} examples, {trainer.state.global_step} steps; losses {losses}")
    adapter = out / "adapter"
    trainer.save_model(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    merge_adapter(cfg.student.model, adapter, merged)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder built by bench/svamp_quality.py")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--batches",
        choices=["random", "length-blocks"],
        default="random",
        help="random batches (the stock default), or transformers' length grouping, which "
        "trains blocks of about ten steps of one task (mapd's order before it shuffled them)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override, e.g. eval.limit=200 (the reference's first 200)",
    )
    parser.add_argument("--out", type=Path, default=None, help="default RUN_DIR-reference-PREC")
    args = parser.parse_args()
    cfg = load_config(args.run_dir / "config.yaml", args.set)
    variant = args.precision + ("" if args.batches == "random" else f"-{args.batches}")
    out = args.out or args.run_dir.with_name(f"{args.run_dir.name}-reference-{variant}")
    out.mkdir(parents=True, exist_ok=True)
    examples = read_jsonl(args.run_dir / "dataset" / "train.jsonl", Example)
    merged = train(cfg, examples, out, args.precision, args.batches)
    chat = cfg.train.prompt_format == "chat" and cfg.student.chat_template
    student = cfg.student.model_copy(
        update={"name": "reference", "model": str(merged.resolve()), "chat_template": chat}
    )
    metrics = asyncio.run(evaluate(cfg, out, "reference", student, eval_questions(cfg)))
    print(json.dumps(metrics, indent=2))
    trained = args.run_dir / "eval" / "trained" / "predictions.jsonl"
    if trained.exists():
        n = metrics["n"]
        rows = [json.loads(line) for line in trained.read_text(encoding="utf-8").splitlines()]
        same = sum(r["correct"] for r in rows[:n])
        print(
            f"stock Trainer ({variant}): {metrics['accuracy']:.1%}; "
            f"mapd train, same data: {same / n:.1%} (first {n})"
        )


if __name__ == "__main__":
    main()

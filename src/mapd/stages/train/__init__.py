"""Stage `train`: fine-tune the student on the run's training set (LoRA or full, the two-task
loss, exact masking).

Reads  dataset/train.jsonl
Writes student/ (adapter or model, checkpoints, train_log.jsonl, manifest.json)

Modules: `tokenize` (prompt/target ids and labels), `collate` (dynamic padding, or the
examples end to end), `trainer` (the Trainer with the two-task loss), `model` (base model,
LoRA, merge), `stage` (the training run: resume, merge, manifest, summary). This module
stays free of torch so that the pipeline can fingerprint the stage without loading it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapd.config import RunConfig

NAME = "train"
INPUTS = ["dataset/train.jsonl"]
OUTPUTS = ["student/manifest.json"]
ALWAYS_RUNS = False

# TrainingArguments of `train.args` that say only when checkpoints are saved: a run that
# saves more often (to lose less when it is stopped) trains the same student
CHECKPOINT_ARGS = frozenset({"save_strategy", "save_steps", "save_total_limit"})


def settings(cfg: RunConfig) -> dict[str, Any]:
    """What the trained student depends on besides the dataset (its fingerprint's settings).

    Settings that change only how the run goes, not the weights it ends with, enter at a fixed
    value, so that switching them does not retrain: activation checkpointing (a run that ran
    out of memory resumes from its checkpoint with it on), and `merge` under full fine-tuning,
    which has no adapter to merge."""
    fixed: dict[str, Any] = {"gradient_checkpointing": False}
    if cfg.train.method == "full":
        fixed["merge"] = False
    # how often checkpoints are saved changes only what an interrupted run resumes from
    args = {k: v for k, v in cfg.train.args.items() if k not in CHECKPOINT_ARGS}
    fixed["args"] = args
    train = cfg.train.model_copy(update=fixed)
    # settings added later enter only when set, so that a student trained before they
    # existed stays current (a user's trained student is not thrown away by an upgrade)
    unset = {name for name in ("quantize",) if not getattr(cfg.train, name)}
    if not args:
        unset.add("args")
    if cfg.train.packing == "group":
        unset.add("packing")
    return {
        "train": train.model_dump(
            mode="json", exclude={"report_to", "logging_steps", "seed", *unset}
        ),
        "student": cfg.student.trained_from,
        "seed": cfg.training_seed,
    }


def run(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    from mapd.stages.train.stage import run as train

    return train(cfg, run_dir)

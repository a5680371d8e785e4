"""The train stage end to end on a tiny random model: learning, saving, manifest, overlong, resume."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tests.stages.train.toy_run import make_config, toy_examples, write_dataset
from transformers import AutoModelForCausalLM, TrainerCallback

from mapd.errors import MapdError
from mapd.records import Example
from mapd.rundir import write_manifest
from mapd.stages.pipeline import train_student as run
from mapd.stages.train.collate import PadCollator
from mapd.stages.train.stage import use_bf16
from mapd.stages.train.tokenize import encode_examples
from mapd.stages.train.trainer import two_task_loss


def dataset_loss(model_dir, tokenizer, examples) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = encode_examples(examples, tokenizer, "chat", 128).rows
    batch = PadCollator(pad_id=tokenizer.pad_token_id)([vars(r) for r in rows])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return two_task_loss(logits, batch["labels"], batch["task"], 0.5)[0].item()


def log_entries(run_dir) -> list[dict]:
    lines = (run_dir / "student" / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_full_fine_tuning_lowers_the_loss_and_saves_the_model(
    tiny_model_dir, tiny_tokenizer, tmp_path
):
    examples = toy_examples(16)
    write_dataset(tmp_path, examples)
    cfg = make_config(tiny_model_dir, tmp_path, method="full", epochs=3, lr=1e-2)
    manifest = run(cfg, tmp_path)
    student = tmp_path / "student"
    before = dataset_loss(tiny_model_dir, tiny_tokenizer, examples)
    after = dataset_loss(student / "model", tiny_tokenizer, examples)
    assert after < before - 1.0, (before, after)
    assert json.loads((student / "manifest.json").read_text()) == manifest
    assert manifest["method"] == "full" and manifest["model_dir"] == "model"
    assert manifest["steps"] == 24 and manifest["examples"] == {"feedback": 16, "rationale": 16}
    assert manifest["base_model"] == str(tiny_model_dir)
    losses = manifest["final_losses"]
    assert set(losses) == {"loss", "feedback_loss", "rationale_loss"}
    # the logged loss is the objective over the logged tokens (alpha 0.5)
    objective = 0.5 * losses["feedback_loss"] + 0.5 * losses["rationale_loss"]
    assert losses["loss"] == pytest.approx(objective, abs=1e-4)
    assert (student / "model" / "tokenizer.json").exists()
    logged = [e for e in log_entries(tmp_path) if "loss" in e]
    assert logged[-1]["step"] == 24
    assert logged[-1]["rationale_loss"] < logged[0]["rationale_loss"]


def test_lora_saves_the_adapter_and_a_merged_model(tiny_model_dir, tiny_tokenizer, tmp_path):
    from peft import PeftModel

    write_dataset(tmp_path, toy_examples(6))
    cfg = make_config(tiny_model_dir, tmp_path, method="lora", max_steps=3, merge=True)
    manifest = run(cfg, tmp_path)
    student = tmp_path / "student"
    assert manifest["method"] == "lora" and manifest["steps"] == 3
    assert manifest["model_dir"] == "adapter" and manifest["merged_dir"] == "merged"
    assert (student / "adapter" / "adapter_config.json").exists()
    assert not (student / "adapter" / "model.safetensors").exists()  # the adapter only
    ids = torch.tensor([tiny_tokenizer("Tom has 3 apples")["input_ids"]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(base, student / "adapter").eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(student / "merged")(ids).logits
    assert torch.allclose(adapted, merged, atol=1e-4)
    assert (tmp_path / "manifests" / "train.json").exists()


class CountSteps(TrainerCallback):
    steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def test_merge_switched_on_after_training_merges_without_training_again(tiny_model_dir, tmp_path):
    write_dataset(tmp_path, toy_examples(4))
    settings = {"method": "lora", "max_steps": 2}
    trained = run(make_config(tiny_model_dir, tmp_path, **settings), tmp_path)
    assert trained["merged_dir"] is None and not (tmp_path / "student" / "merged").exists()

    counter = CountSteps()
    merged = run(make_config(tiny_model_dir, tmp_path, **settings, merge=True), tmp_path, [counter])
    assert counter.steps == 0 and merged["merged_dir"] == "merged"
    assert merged["final_losses"] == trained["final_losses"]
    assert (tmp_path / "student" / "merged" / "config.json").exists()
    on_disk = json.loads((tmp_path / "student" / "manifest.json").read_text())
    assert on_disk["merged_dir"] == "merged"  # what evaluation and the next round read
    again = run(make_config(tiny_model_dir, tmp_path, **settings, merge=True), tmp_path)
    assert again["skipped"] and again["merged_dir"] == "merged"

    unmerged = run(make_config(tiny_model_dir, tmp_path, **settings), tmp_path, [counter])
    assert counter.steps == 0 and unmerged["merged_dir"] is None
    assert run(make_config(tiny_model_dir, tmp_path, **settings), tmp_path)["skipped"]


def test_merge_means_nothing_to_full_fine_tuning(tiny_model_dir, tmp_path):
    write_dataset(tmp_path, toy_examples(4))
    run(make_config(tiny_model_dir, tmp_path, method="full", max_steps=1), tmp_path)
    merged = run(
        make_config(tiny_model_dir, tmp_path, method="full", max_steps=1, merge=True), tmp_path
    )
    assert merged["skipped"] and merged["merged_dir"] is None  # no adapter: nothing to redo


def test_overlong_examples_stop_the_run_or_are_dropped_and_counted(tiny_model_dir, tmp_path):
    long = Example(
        id="long",
        kind="feedback",
        question_id="q",
        teacher="t",
        instruction="Point out.",
        input="Tom has apples. " * 60,
        output="Wrong.",
    )
    write_dataset(tmp_path, [*toy_examples(4), long])
    with pytest.raises(MapdError, match="1 of 9 .*: long"):
        run(make_config(tiny_model_dir, tmp_path, max_steps=1), tmp_path)
    cfg = make_config(tiny_model_dir, tmp_path, max_steps=1, on_overlong="drop")
    manifest = run(cfg, tmp_path)
    assert manifest["dropped_overlong"] == 1 and manifest["dropped_ids"] == ["long"]
    assert manifest["examples"] == {"feedback": 4, "rationale": 4}


class Killed(Exception):
    pass


class KillAtStep(TrainerCallback):
    """Stop the run with an exception at the end of a step, like a kill."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


class CountLayerCalls(TrainerCallback):
    """Counts the calls of the first layer's first module, as they start: transformers
    checkpoints a layer's `forward`, not its `__call__`, and torch stops a recomputation
    once it has what the backward needs."""

    calls = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        first = "layers.0.input_layernorm"
        norm = next(m for n, m in model.named_modules() if n.endswith(first))
        norm.register_forward_pre_hook(self.count)

    def count(self, *_):
        self.calls += 1


@pytest.mark.parametrize("checkpointing_on_resume", [False, True])
def test_a_killed_run_resumes_from_its_last_checkpoint(
    tiny_model_dir, tmp_path, checkpointing_on_resume
):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    for folder in (killed, whole):
        write_dataset(folder, toy_examples(8))
    settings = {"method": "full", "epochs": 2, "logging_steps": 1}
    with pytest.raises(Killed):
        run(make_config(tiny_model_dir, killed, **settings), killed, [KillAtStep(6)])
    assert (killed / "student" / "checkpoints" / "checkpoint-4").is_dir()
    assert not (killed / "student" / "manifest.json").exists()
    assert max(e["step"] for e in log_entries(killed)) == 5  # logged past checkpoint-4

    # a run that ran out of memory resumes with activation checkpointing switched on
    resumed = make_config(
        tiny_model_dir, killed, **settings, gradient_checkpointing=checkpointing_on_resume
    )
    counter = CountLayerCalls()
    manifest = run(resumed, killed, [counter])
    assert manifest["resumed_from"] == "checkpoint-4" and manifest["steps"] == 8
    assert counter.calls == 4 * (2 if checkpointing_on_resume else 1)  # steps 5 to 8
    steps = [e["step"] for e in log_entries(killed) if "loss" in e]
    assert steps == list(range(1, 9))  # 5 and 6 ran twice, but are logged once

    reference = run(make_config(tiny_model_dir, whole, **settings), whole)
    assert reference["resumed_from"] is None
    assert manifest["final_losses"]["loss"] == pytest.approx(
        reference["final_losses"]["loss"], rel=1e-4
    )


def test_a_finished_run_is_skipped_and_changed_settings_start_afresh(tiny_model_dir, tmp_path):
    write_dataset(tmp_path, toy_examples(4))
    first = run(make_config(tiny_model_dir, tmp_path, max_steps=2), tmp_path)
    again = run(make_config(tiny_model_dir, tmp_path, max_steps=2), tmp_path)
    assert again["skipped"] and again["steps"] == first["steps"] == 2
    changed = run(make_config(tiny_model_dir, tmp_path, max_steps=3, alpha=0.0), tmp_path)
    assert "skipped" not in changed and changed["steps"] == 3
    assert changed["resumed_from"] is None


def test_gradient_accumulation_gives_the_same_step_loss(tiny_model_dir, tmp_path):
    """4 examples in one micro-batch, or in 2 of 2: the same step, the same logged loss."""
    losses = []
    for batch_size, grad_accum in ((4, 1), (2, 2)):
        folder = tmp_path / f"b{batch_size}"
        write_dataset(folder, toy_examples(2))
        cfg = make_config(
            tiny_model_dir,
            folder,
            method="full",
            max_steps=1,
            logging_steps=1,
            batch_size=batch_size,
            grad_accum=grad_accum,
        )
        losses.append(run(cfg, folder)["final_losses"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_precision_is_used_and_recorded(tiny_model_dir, tmp_path, precision):
    write_dataset(tmp_path, toy_examples(2))
    cfg = make_config(tiny_model_dir, tmp_path, method="lora", max_steps=1, precision=precision)
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(args.bf16)

    assert run(cfg, tmp_path, callbacks=[Probe()])["precision"] == precision
    assert seen == [precision == "bf16"]


def test_auto_precision_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not use_bf16("auto") and use_bf16("bf16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert use_bf16("auto") and not use_bf16("fp32")


def test_activation_checkpointing_recomputes_the_layers_and_trains_the_same(
    tiny_model_dir, tmp_path
):
    """train.gradient_checkpointing with LoRA: each layer runs again in the backward pass,
    and the second step's loss (after one update) is the same as without it."""
    seen = {}
    for on in (False, True):
        folder = tmp_path / f"checkpointing-{on}"
        write_dataset(folder, toy_examples(2))
        cfg = make_config(
            tiny_model_dir,
            folder,
            method="lora",
            max_steps=2,
            logging_steps=1,
            gradient_checkpointing=on,
        )
        counter = CountLayerCalls()
        final = run(cfg, folder, callbacks=[counter])["final_losses"]
        seen[on] = (final, counter.calls)
    (loss_off, calls_off), (loss_on, calls_on) = seen[False], seen[True]
    assert calls_off == 2  # one forward per step
    assert calls_on == 2 * calls_off
    assert loss_on == pytest.approx(loss_off, rel=1e-5)


@pytest.mark.parametrize(
    "exam, dropped, needle",
    [
        (
            {"questions": 0, "skipped_rows": 3, "mistakes": 0},
            0,
            "0 training questions (3 malformed rows skipped",
        ),
        ({"questions": 12, "skipped_rows": 0, "mistakes": 0}, 0, "answered all 12 questions right"),
        (
            {"questions": 12, "skipped_rows": 0, "mistakes": 5},
            5,
            "5 of 5 mistakes had no accepted rationale",
        ),
    ],
)
def test_an_empty_training_set_says_why(tmp_path, exam, dropped, needle):
    run_dir = tmp_path / "run"
    write_dataset(run_dir, [])
    (run_dir / "exam.json").write_text(json.dumps(exam))
    summary = {"dropped_no_accepted_rationale": dropped}
    write_manifest(run_dir, "build", "sha256:0", [], summary, 0.0)
    with pytest.raises(MapdError) as err:
        run(make_config(tmp_path / "no-model", run_dir), run_dir)
    assert needle in err.value.message and "dataset stage" not in str(err.value)


def test_progress_is_a_line_per_tenth_with_losses_per_task_not_raw_dicts(
    tiny_model_dir, tmp_path, capsys
):
    write_dataset(tmp_path, toy_examples(16))
    run(make_config(tiny_model_dir, tmp_path, epochs=2, logging_steps=1), tmp_path)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("train: step ")]
    assert len(lines) == 10 and lines[-1].startswith("train: step 16/16 (100%), loss ")
    assert all(re.search(r"loss [\d.]+ \(feedback [\d.]+, rationale [\d.]+\), ", x) for x in lines)
    assert all(x.endswith(" left") for x in lines)
    assert "{'" not in captured.err + captured.out  # no printed log dicts
    assert len([e for e in log_entries(tmp_path) if "loss" in e]) == 16  # the raw log is kept

"""The two-task loss: α = 1 / 0 give the single-task CEs, α = 0.5 their mean, a missing task adds 0."""

from __future__ import annotations

import pytest
import torch
from tests.stages.train.toy_run import toy_examples
from transformers import AutoModelForCausalLM
from transformers.trainer_pt_utils import get_length_grouped_indices

from mapd.stages.train.collate import PadCollator
from mapd.stages.train.tokenize import encode_examples
from mapd.stages.train.trainer import (
    MASKED_LOGITS_TO_KEEP,
    shuffled_length_groups,
    task_token_counts,
    trained_positions,
    two_task_loss,
)


@pytest.fixture(scope="module")
def model_and_batch(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    rows = encode_examples(toy_examples(3), tiny_tokenizer, "chat", 256).rows
    batch = PadCollator(pad_id=tiny_tokenizer.pad_token_id)([vars(r) for r in rows])
    return model, batch


def forward(model, batch, rows=None):
    pick = slice(None) if rows is None else rows
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"][pick], attention_mask=batch["attention_mask"][pick]
        ).logits


def reference_ce(model, batch, rows) -> float:
    """transformers' own causal-LM loss on those rows only: the mean over their trained tokens."""
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"][rows],
            attention_mask=batch["attention_mask"][rows],
            labels=batch["labels"][rows],
        ).loss.item()


def test_alpha_weights_the_single_task_losses(model_and_batch):
    model, batch = model_and_batch
    logits = forward(model, batch)
    feedback = reference_ce(model, batch, batch["task"] == 0)
    rationale = reference_ce(model, batch, batch["task"] == 1)
    assert abs(feedback - rationale) > 1e-3  # the check below could fail

    def loss(alpha: float) -> float:
        return two_task_loss(logits, batch["labels"], batch["task"], alpha)[0].item()

    assert loss(1.0) == pytest.approx(feedback, abs=1e-5)
    assert loss(0.0) == pytest.approx(rationale, abs=1e-5)
    assert loss(0.5) == pytest.approx((feedback + rationale) / 2, abs=1e-5)
    assert loss(0.2) == pytest.approx(0.2 * feedback + 0.8 * rationale, abs=1e-5)


def test_a_missing_task_contributes_zero_and_the_other_keeps_its_weight(model_and_batch):
    model, batch = model_and_batch
    only = batch["task"] == 0
    logits = forward(model, batch, only)
    labels, task = batch["labels"][only], batch["task"][only]
    feedback = reference_ce(model, batch, only)
    assert two_task_loss(logits, labels, task, 0.0)[0].item() == 0.0
    assert two_task_loss(logits, labels, task, 0.5)[0].item() == pytest.approx(
        feedback / 2, abs=1e-5
    )


def test_micro_batches_normalised_by_step_counts_sum_to_the_whole_batch_loss(model_and_batch):
    model, batch = model_and_batch
    whole = two_task_loss(forward(model, batch), batch["labels"], batch["task"], 0.3)[0]
    counts = task_token_counts(batch["labels"], batch["task"])
    parts = [
        two_task_loss(forward(model, batch, s), batch["labels"][s], batch["task"][s], 0.3, counts)[
            0
        ]
        for s in (slice(0, 2), slice(2, None))
    ]
    assert sum(parts).item() == pytest.approx(whole.item(), abs=1e-5)
    # whereas averaging per-micro-batch means, the usual mistake, gives another number
    naive = [
        two_task_loss(forward(model, batch, s), batch["labels"][s], batch["task"][s], 0.3)[0]
        for s in (slice(0, 2), slice(2, None))
    ]
    assert (sum(naive) / 2).item() != pytest.approx(whole.item(), abs=1e-4)


@pytest.mark.skipif(
    not MASKED_LOGITS_TO_KEEP, reason="transformers < 5.21 takes logits_to_keep as a count only"
)
def test_logits_of_the_trained_positions_only_give_the_same_loss(model_and_batch):
    model, batch = model_and_batch
    keep = trained_positions(batch["labels"])
    assert 0 < int(keep.sum()) < keep.numel() // 2  # prompts and padding are left out
    with torch.no_grad():
        kept = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=keep,
        ).logits
    assert kept.shape == (int(keep.sum()), model.config.vocab_size)
    full = two_task_loss(forward(model, batch), batch["labels"], batch["task"], 0.3)
    part = two_task_loss(kept, batch["labels"], batch["task"], 0.3)
    for a, b in zip(full, part, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        two_task_loss(kept[1:], batch["labels"], batch["task"], 0.3)


@pytest.mark.skipif(
    not MASKED_LOGITS_TO_KEEP, reason="transformers < 5.21 takes logits_to_keep as a count only"
)
def test_the_trainer_asks_the_model_for_the_trained_logits_only(
    tiny_model_dir, tiny_tokenizer, tmp_path
):
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from mapd.stages.train.trainer import TwoTaskTrainer

    rows = encode_examples(toy_examples(2), tiny_tokenizer, "chat", 256).rows
    batch = PadCollator(pad_id=tiny_tokenizer.pad_token_id)([vars(r) for r in rows])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = TwoTaskTrainer(model=model, args=args, alpha=0.5)
    _, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    assert outputs.logits.shape[0] == int(trained_positions(batch["labels"]).sum())
    trainer.trained_logits_only = False
    _, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    assert outputs.logits.shape[:2] == batch["labels"].shape


def test_length_groups_keep_transformers_batches_but_shuffle_their_order():
    # two tasks of well-separated lengths, as feedback (long) and rationales (short) are
    lengths = [300 + i for i in range(100)] + [100 + i for i in range(100)]
    torch.manual_seed(0)
    ours = shuffled_length_groups(lengths, batch_size=4, step_size=8)
    torch.manual_seed(0)
    grouped = get_length_grouped_indices(lengths, 8)
    assert sorted(ours) == list(range(200))

    def batches(order):
        return [order[i : i + 4] for i in range(0, len(order), 4)]

    # the same batches (the same padding), the longest first
    assert sorted(map(sorted, batches(ours))) == sorted(map(sorted, batches(grouped)))
    assert ours[:4] == grouped[:4] and max(lengths) in [lengths[i] for i in ours[:4]]

    def switches(order):
        long = [lengths[b[0]] >= 300 for b in batches(order)]
        return sum(a != b for a, b in zip(long, long[1:], strict=False))

    # transformers' order switches task about twice per mega-batch; ours at random
    assert switches(grouped) <= 10 < 20 <= switches(ours)


def test_the_trainer_samples_shuffled_length_groups(tiny_model_dir, tiny_tokenizer, tmp_path):
    from transformers import TrainingArguments

    from mapd.stages.train.trainer import ShuffledLengthGroupedSampler, TwoTaskTrainer

    rows = [vars(r) for r in encode_examples(toy_examples(6), tiny_tokenizer, "chat", 256).rows]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        train_sampling_strategy="group_by_length",
        use_cpu=True,
        report_to="none",
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = TwoTaskTrainer(model=model, args=args, alpha=0.5, train_dataset=rows)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, ShuffledLengthGroupedSampler)
    assert (sampler.batch_size, sampler.step_size) == (2, 4)
    assert sorted(sampler) == list(range(len(rows)))


@pytest.mark.parametrize("task_mean", ["dataset", "step"])
def test_with_dataset_means_a_rows_loss_does_not_depend_on_the_rest_of_its_step(
    tiny_model_dir, tiny_tokenizer, tmp_path, task_mean
):
    from transformers import TrainingArguments

    from mapd.stages.train.trainer import TwoTaskTrainer

    rows = [vars(r) for r in encode_examples(toy_examples(3), tiny_tokenizer, "chat", 256).rows]
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, use_cpu=True, report_to="none"
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    trainer = TwoTaskTrainer(
        model=model, args=args, alpha=0.3, task_mean=task_mean, train_dataset=rows
    )
    collate = PadCollator(pad_id=tiny_tokenizer.pad_token_id)

    def step_loss(picked):
        batch = collate(picked)
        counts = task_token_counts(batch["labels"], batch["task"])
        with torch.no_grad():
            return trainer.compute_loss(model, batch, num_items_in_batch=counts).item()

    feedback = [r for r in rows if r["task"] == 0]
    rationale = [r for r in rows if r["task"] == 1]
    picked = [feedback[0], feedback[1], rationale[0]]
    together = step_loss(picked)
    apart = sum(step_loss([row]) for row in picked)
    if task_mean == "dataset":
        # every token of a task weighs the same: the step's loss is the sum of its rows' losses
        totals = [
            sum(sum(x != -100 for x in r["labels"][1:]) for r in t) for t in (feedback, rationale)
        ]
        expected = torch.tensor(totals, dtype=torch.float32) * 2 / len(rows)
        assert torch.allclose(trainer.per_step, expected)
        assert together == pytest.approx(apart, rel=1e-5)
    else:
        # a task's rows get the task's full weight in every step: apart, the feedback counts twice
        assert trainer.per_step is None
        assert apart != pytest.approx(together, rel=0.1)

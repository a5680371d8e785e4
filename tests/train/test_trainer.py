"""The two-task loss: α = 1 / 0 give the single-task CEs, α = 0.5 their mean, a missing task adds 0."""

from __future__ import annotations

import pytest
import torch
from tests.train.toy_run import toy_examples
from transformers import AutoModelForCausalLM

from mapd.train.collate import PadCollator
from mapd.train.tokenize import encode_examples
from mapd.train.trainer import task_token_counts, two_task_loss


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

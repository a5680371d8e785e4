"""Padding-free batches (collate.FlatCollator): the same loss, gradients and training as padded ones."""

from __future__ import annotations

import pytest
import torch
from tests.stages.train.toy_run import make_config, toy_examples, write_dataset
from transformers import AutoModelForCausalLM, TrainingArguments

from mapd.stages.pipeline import train_student as run
from mapd.stages.train import settings
from mapd.stages.train.collate import FlatCollator, PadCollator
from mapd.stages.train.tokenize import IGNORE, encode_examples
from mapd.stages.train.trainer import TwoTaskTrainer, task_token_counts


@pytest.fixture(scope="module")
def features(tiny_tokenizer) -> list[dict]:
    rows = encode_examples(toy_examples(3, seed=5), tiny_tokenizer, "chat", 256).rows
    assert len({len(r) for r in rows}) > 2  # padded rows really carry padding
    return [vars(r) for r in rows]


@pytest.fixture(scope="module")
def trainer(tiny_model_dir, tmp_path_factory) -> TwoTaskTrainer:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False  # as prepare_for_training; a cache hides the packing
    args = TrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("out")), use_cpu=True, report_to="none"
    )
    return TwoTaskTrainer(model=model, args=args, alpha=0.3)


def loss_and_grads(trainer: TwoTaskTrainer, batch: dict) -> tuple[float, torch.Tensor]:
    model = trainer.model
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()


def test_a_flat_batch_restarts_positions_and_never_predicts_across_examples(features):
    # an example trained from its first token on: that token is not predicted in a flat row
    features = [*features, {"input_ids": [5, 6, 7], "labels": [5, 6, 7], "task": 1}]
    batch = FlatCollator()(features)
    lengths = [len(f["input_ids"]) for f in features]
    starts = torch.tensor([0, *lengths[:-1]]).cumsum(0)
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert set(batch) == {"input_ids", "labels", "position_ids", "task"}
    assert (batch["position_ids"][0, starts] == 0).all()
    assert batch["position_ids"][0].max() == max(lengths) - 1
    assert (batch["labels"][0, starts] == IGNORE).all()
    assert batch["task"][0].tolist() == [f["task"] for f in features for _ in f["input_ids"]]
    padded = PadCollator(pad_id=0)(features)
    assert task_token_counts(batch["labels"], batch["task"]).tolist() == (
        task_token_counts(padded["labels"], padded["task"]).tolist()
    )


def test_the_padding_free_loss_and_gradients_equal_the_padded_ones(trainer, features):
    padded_loss, padded_grad = loss_and_grads(trainer, PadCollator(pad_id=0)(features))
    flat = FlatCollator()(features)
    flat_loss, flat_grad = loss_and_grads(trainer, flat)
    assert flat_loss == pytest.approx(padded_loss, abs=1e-5)
    assert torch.allclose(flat_grad, padded_grad, atol=1e-5)
    # positions that run on through the row make it one long sequence: a different loss
    running = flat | {"position_ids": torch.arange(flat["input_ids"].size(1))[None]}
    assert abs(loss_and_grads(trainer, running)[0] - padded_loss) > 1e-3


def test_a_padding_free_run_trains_as_the_padded_run(tiny_model_dir, tmp_path):
    losses = {}
    for packing in ("group", "padding_free"):
        run_dir = tmp_path / packing
        write_dataset(run_dir, toy_examples(8))
        cfg = make_config(
            tiny_model_dir, run_dir, method="full", precision="fp32", packing=packing, max_steps=3
        )
        losses[packing] = run(cfg, run_dir)["final_losses"]
    assert losses["padding_free"] == pytest.approx(losses["group"], abs=2e-4)


def test_packing_enters_the_fingerprint_only_when_padding_free(tmp_path):
    default = settings(make_config(tmp_path, tmp_path))
    assert "packing" not in default["train"]  # a student trained before it existed stays current
    assert settings(make_config(tmp_path, tmp_path, packing="group")) == default
    assert settings(make_config(tmp_path, tmp_path, packing="padding_free")) != default

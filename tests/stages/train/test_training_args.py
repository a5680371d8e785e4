"""`train.args` and `train.report_to`: TrainingArguments passed through, checked by
transformers before the model loads, and part of the train stage's fingerprint."""

from __future__ import annotations

import importlib.util

import pytest
from tests.stages.train.toy_run import make_config, toy_examples, write_dataset

from mapd.errors import MapdError
from mapd.stages.train import settings
from mapd.stages.train import stage as train_stage
from mapd.stages.train.stage import training_args


def test_train_args_pass_through_to_the_trainer(tmp_path):
    args = {"weight_decay": 0.1, "max_grad_norm": "5e-1", "save_strategy": "steps"}
    ta = training_args(make_config(tmp_path, tmp_path, args=args), tmp_path / "out")
    assert ta.weight_decay == 0.1
    assert ta.max_grad_norm == 0.5  # YAML reads 5e-1 as a string; the field is a float
    assert ta.save_strategy == "steps"  # one of mapd's defaults, changed
    assert ta.learning_rate == 5e-3 and ta.train_sampling_strategy == "group_by_length"


def test_an_unknown_key_names_the_closest_one(tmp_path):
    cfg = make_config(tmp_path, tmp_path, args={"wieght_decay": 0.1})
    with pytest.raises(MapdError, match=r"train\.args\.wieght_decay: .*did you mean weight_decay"):
        training_args(cfg, tmp_path / "out")


@pytest.mark.parametrize(
    "args, needle",
    [
        ({"optim": "nosuch"}, "train.args: nosuch is not a valid OptimizerNames"),
        ({"weight_decay": "much"}, "train.args.weight_decay: 'much' is not a float"),
    ],
)
def test_a_bad_value_stops_before_the_model_loads(tmp_path, monkeypatch, args, needle):
    write_dataset(tmp_path, toy_examples(4))

    def load_student(*_, **__):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(train_stage, "load_student", load_student)
    with pytest.raises(MapdError) as raised:
        train_stage.run(make_config(tmp_path, tmp_path, args=args), tmp_path)
    assert needle in str(raised.value)


def test_args_enter_the_fingerprint_and_trackers_do_not(tmp_path):
    base = settings(make_config(tmp_path, tmp_path, args={"weight_decay": 0.0}))
    assert settings(make_config(tmp_path, tmp_path, args={"weight_decay": 0.1})) != base
    tracked = make_config(tmp_path, tmp_path, args={"weight_decay": 0.0}, report_to="tensorboard")
    assert settings(tracked) == base


def test_how_often_checkpoints_are_saved_leaves_the_fingerprint_alone(tmp_path):
    """A long run switched to saving every 20 steps (to lose less when stopped) resumes and
    keeps its student: only what it saves changes, not the weights it trains."""
    plain = settings(make_config(tmp_path, tmp_path))
    saving = {"save_strategy": "steps", "save_steps": 20, "save_total_limit": 1}
    assert settings(make_config(tmp_path, tmp_path, args=saving)) == plain
    decayed = settings(make_config(tmp_path, tmp_path, args={"weight_decay": 0.1}))
    assert settings(make_config(tmp_path, tmp_path, args={**saving, "weight_decay": 0.1})) == (
        decayed
    )


def test_settings_added_later_leave_an_earlier_students_fingerprint_alone(tmp_path):
    """A student trained before `args` and `quantize` existed is still current: unset, they
    are not in the train stage's settings (else every upgrade would train it again)."""
    trained = settings(make_config(tmp_path, tmp_path))["train"]
    assert "args" not in trained and "quantize" not in trained
    assert settings(make_config(tmp_path, tmp_path, args={"optim": "sgd"}))["train"]["args"]


def test_a_tracker_not_installed_is_named_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(train_stage, "get_available_reporting_integrations", lambda: [])
    cfg = make_config(tmp_path, tmp_path, report_to=["trackio", "tensorboard"])
    with pytest.raises(MapdError, match="train.report_to: trackio, tensorboard is not installed"):
        training_args(cfg, tmp_path / "out")


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed"
)
def test_tensorboard_gets_the_losses_per_task(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_dataset(tmp_path, toy_examples(8))
    cfg = make_config(
        tiny_model_dir, tmp_path, max_steps=2, logging_steps=1, report_to="tensorboard"
    )
    train_stage.run(cfg, tmp_path)
    [events] = (tmp_path / "student" / "checkpoints" / "runs").glob("*/events.out.tfevents.*")
    tags = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert {"train/loss", "train/feedback_loss", "train/rationale_loss"} <= set(tags)


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here"
)
def test_a_library_train_args_needs_and_lacks_is_one_error_naming_it(tmp_path):
    """`deepspeed: ds.json` without deepspeed installed was a PackageNotFoundError traceback."""
    (tmp_path / "ds.json").write_text('{"train_micro_batch_size_per_gpu": "auto"}')
    cfg = make_config(tmp_path, tmp_path, args={"deepspeed": str(tmp_path / "ds.json")})
    with pytest.raises(MapdError, match="train.args") as err:
        training_args(cfg, tmp_path / "out")
    assert "install" in (err.value.hint or "")

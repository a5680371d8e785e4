"""Loading the student for training: weights in the precision they train in, QLoRA's checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file
from tests.stages.train.toy_run import make_config, toy_examples, write_dataset

from mapd.config import TrainConfig
from mapd.errors import MapdError
from mapd.stages.pipeline import train_student as run
from mapd.stages.train.model import base_dtype, check_quantize, load_student

MAPD_SCRIPT = Path(sys.executable).parent / "mapd"


def dtypes(model: torch.nn.Module, trainable: bool) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.requires_grad == trainable}


def test_the_frozen_base_of_lora_loads_in_bf16_and_the_adapters_train_in_fp32(
    tiny_model_dir, tmp_path
):
    train = make_config(tiny_model_dir, tmp_path, method="lora", precision="bf16").train
    model, _ = load_student(str(tiny_model_dir), train)
    assert dtypes(model, trainable=False) == {torch.bfloat16}
    assert dtypes(model, trainable=True) == {torch.float32}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if "lora_" in n
    }


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_full_fine_tuning_keeps_fp32_weights(tiny_model_dir, tmp_path, precision):
    """bf16 mixed precision autocasts the forward pass; the weights it updates stay fp32."""
    train = make_config(tiny_model_dir, tmp_path, method="full", precision=precision).train
    model, _ = load_student(str(tiny_model_dir), train)
    assert dtypes(model, trainable=True) == {torch.float32}
    assert dtypes(model, trainable=False) == set()


def test_lora_in_fp32_loads_the_base_in_fp32(tiny_model_dir, tmp_path):
    train = make_config(tiny_model_dir, tmp_path, method="lora", precision="fp32").train
    model, _ = load_student(str(tiny_model_dir), train)
    assert dtypes(model, trainable=False) == dtypes(model, trainable=True) == {torch.float32}


@pytest.mark.parametrize(
    "cuda, bf16, precision, expected",
    [
        (True, True, "auto", torch.bfloat16),
        (True, False, "auto", torch.float16),  # a T4 or a V100
        (True, True, "fp32", torch.float32),
        (False, False, "auto", torch.float32),  # a CPU without bf16 arithmetic
        (False, False, "bf16", torch.bfloat16),
    ],
)
def test_the_frozen_base_is_in_half_precision_where_the_hardware_runs_it(
    monkeypatch, cuda, bf16, precision, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert base_dtype(TrainConfig(method="lora", precision=precision)) == expected
    assert base_dtype(TrainConfig(method="full", precision=precision)) == torch.float32


def saved_dtypes(path: Path) -> set[torch.dtype]:
    return {tensor.dtype for tensor in load_file(path).values()}


def test_a_bf16_adapter_is_saved_in_fp32_and_merged_in_bf16(tiny_model_dir, tmp_path):
    write_dataset(tmp_path, toy_examples(2))
    cfg = make_config(
        tiny_model_dir, tmp_path, method="lora", max_steps=1, precision="bf16", merge=True
    )
    assert run(cfg, tmp_path)["precision"] == "bf16"
    student = tmp_path / "student"
    assert saved_dtypes(student / "adapter" / "adapter_model.safetensors") == {torch.float32}
    assert saved_dtypes(student / "merged" / "model.safetensors") == {torch.bfloat16}


def test_quantize_needs_lora():
    with pytest.raises(ValidationError, match="method: lora"):
        TrainConfig(method="full", quantize="4bit")
    assert TrainConfig().quantize is None


def test_quantize_without_bitsandbytes_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MapdError) as err:
        check_quantize(TrainConfig(quantize="8bit"))
    assert "bitsandbytes" in err.value.message and "mapd[qlora]" in err.value.hint


def test_quantize_without_cuda_stops_mapd_train_before_loading_anything(tmp_path):
    """Through the real entry point; the student's folder does not even exist, so an error
    about it would mean that loading was tried first."""
    run_dir = tmp_path / "run"
    write_dataset(run_dir, toy_examples(2))
    cfg = make_config(tmp_path / "no-such-model", run_dir, quantize="4bit")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = os.environ | {"CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [str(MAPD_SCRIPT), "train", str(config)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.quantize: 4bit needs a CUDA GPU" in errors[0], errors
    assert not (run_dir / "student").exists()

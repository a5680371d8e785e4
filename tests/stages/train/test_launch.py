"""Several processes: the accelerate configs load; a 2-process CPU run trains, one process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.stages.train.toy_run import make_config, toy_examples, write_dataset

ROOT = Path(__file__).resolve().parents[3]
ACCELERATE_CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_the_four_accelerate_configs_are_shipped():
    names = {p.stem for p in ACCELERATE_CONFIGS}
    assert names == {"ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"}


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_every_accelerate_config_loads_and_names_its_command(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # rejects unknown keys
    assert config.num_processes >= 2
    header = path.read_text().splitlines()[:4]
    assert any(f"--config_file configs/accelerate/{path.name} -m mapd train" in h for h in header)


@pytest.mark.slow
def test_two_cpu_processes_train_and_only_the_main_one_writes(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    write_dataset(run_dir, toy_examples(8))
    cfg = make_config(tiny_model_dir, run_dir, method="lora", epochs=2, logging_steps=1)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    # On a machine without GPUs, --multi_gpu is accelerate's way to start torchrun; mapd then
    # selects the CPU (gloo) backend. (`--cpu --num_processes 2` starts a single process.)
    cmd = [
        *accelerate,
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "mapd",
        "train",
        str(config),
    ]
    env = os.environ | {"HF_HOME": str(tmp_path / "hf"), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained ") == 1  # one summary, from the main process
    manifest = json.loads((run_dir / "student" / "manifest.json").read_text())
    assert manifest["processes"] == 2
    assert manifest["steps"] == 4  # 16 examples, 4 per process per step: 2 steps an epoch
    assert (run_dir / "student" / "adapter" / "adapter_config.json").exists()
    assert (run_dir / "student" / "checkpoints" / "checkpoint-4").is_dir()
    log = [
        json.loads(x) for x in (run_dir / "student" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]  # written once, not twice

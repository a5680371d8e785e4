"""bench/gpu_check.py on the CPU: both engines and the LoRA and full trainers run, QLoRA is
skipped with its reason, the table and the JSON say so (about 15 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_the_engines_and_trainers_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--out", str(out)]
    # one thread: on a busy machine two spin-waiting OpenMP threads make each decoding step
    # of the tiny model take 100 times longer (20 s for the engines instead of 0.2 s)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    for name in ("refill", "padded", "lora", "full"):
        assert rows[name].split()[1] == "cpu", rows[name]
    assert rows["qlora:"].startswith("qlora: skipped (train.quantize: 4bit needs a CUDA GPU")
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert {n: r["status"] for n, r in runs.items()} == {
        "refill": "ok",
        "padded": "ok",
        "lora": "ok",
        "qlora": "skipped",
        "full": "ok",
    }
    assert runs["lora"]["lora_weight"] == "float32" and runs["full"]["lora_weight"] == "-"
    assert all(runs[n]["steps"] == 6 and runs[n]["tokens_per_s"] > 0 for n in ("lora", "full"))
    # fp32 greedy decoding: refilled rows give the padded batches' texts
    assert result["identical"] == result["prompts"] == 16, result["differing"]

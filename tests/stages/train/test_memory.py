"""Training memory (issue 32): activation checkpointing is on by default, and the trainer has
malloc return freed activations to the system (bench/train_memory.py measures both)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tests.stages.train.test_stage import CountLayerCalls
from tests.stages.train.toy_run import make_config, toy_examples, write_dataset

from mapd.stages.pipeline import train_student as run
from mapd.stages.train import settings

# Allocate and free 30 MiB (glibc then raises its mmap threshold to 30 MiB), then 20 MiB,
# and print how much of the 20 MiB the process still holds after freeing it.
HELD_AFTER_FREE = """
import sys, torch
from mapd.stages.train.trainer import return_freed_memory_to_os
if sys.argv[1] == "on":
    return_freed_memory_to_os()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
torch.ones(30 << 18)
before = rss()
x = torch.ones(20 << 18)
del x
print((rss() - before) / (20 << 20))
"""


def held_after_free(on: bool) -> float:
    cmd = [sys.executable, "-c", HELD_AFTER_FREE, "on" if on else "off"]
    return float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def test_training_recomputes_the_layers_by_default(tiny_model_dir, tmp_path):
    write_dataset(tmp_path, toy_examples(2))
    cfg = make_config(tiny_model_dir, tmp_path, method="lora", max_steps=1)
    off = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"gradient_checkpointing": False})}
    )
    assert settings(cfg) == settings(off)  # switching it never trains again
    counter = CountLayerCalls()
    run(cfg, tmp_path, callbacks=[counter])
    assert counter.calls == 2  # the forward pass, and again in the backward pass


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_freed_activations_go_back_to_the_system():
    assert held_after_free(on=False) > 0.9  # what malloc does by itself
    assert held_after_free(on=True) < 0.1

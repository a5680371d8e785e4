"""A student whose prefill fails, through the command line: the run ends at once with one clear
error, exit code 2, for every batching mode; no request is left waiting for an answer."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from tests.llm.tiny_models import build_tiny_like
from tests.stages.scripted_classroom import IN_PROCESS, write_config

from mapd.config import ModelEndpoint

BATCHING = typing.get_args(ModelEndpoint.model_fields["batching"].annotation)
POSITIONS = 48  # the exam's prompts are longer, so the first prefill fails


@pytest.fixture(scope="module")
def short_gpt2(tmp_path_factory) -> Path:
    """A tiny GPT-2 with 48 learned positions: a longer prompt fails with an IndexError."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        folder = tmp_path_factory.mktemp("short-gpt2")
        return build_tiny_like(
            folder, "gpt2", n_positions=POSITIONS, n_embd=32, n_layer=2, n_head=4
        )


@pytest.mark.parametrize("batching", BATCHING)
def test_a_failed_prefill_ends_the_run_with_one_clear_error(tmp_path, short_gpt2, batching):
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")  # teachers: not asked by exam
    overrides = [*IN_PROCESS, f"student.model={short_gpt2}", f"student.batching={batching}"]
    env = {**os.environ, "MAPD_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mapd", "run", str(config), *overrides, "--until", "exam"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,  # the refilling engine used to leave the exam waiting forever
    )
    err = result.stderr
    assert result.returncode == 2, err
    assert "Traceback" not in err, err
    error = err[err.index("error: ") :].splitlines()
    assert len(error) == 2 and error[1].lstrip().startswith("hint: "), err
    # transformers' continuous batching hands mapd the message, not the exception's type
    for needle in (str(short_gpt2), "failed (batch_size 8)", "index out of range"):
        assert needle in error[0], err

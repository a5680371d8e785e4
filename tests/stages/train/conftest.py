"""Training test fixtures: a tiny random Llama with a byte-level BPE tokenizer, built once."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.stages.train.toy_run import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)

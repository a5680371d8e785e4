"""Evaluation helpers: majority vote, and asking a plain-format student in its own format."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from tests.stages.scripted_classroom import IN_PROCESS, reply, write_config

from mapd.config import load_config
from mapd.prompts import Prompts
from mapd.records import Question
from mapd.stages.evaluate import majority, trained_student
from mapd.stages.exam import rationale_request
from mapd.testing.loopback import LoopbackServer


def test_majority_vote():
    assert majority(["3", "4", "4", None]) == "4"
    assert majority(["5", "3", "3", "5"]) == "5"  # a tie goes to the first seen
    assert majority([None, None]) is None


def test_plain_trained_student_is_asked_in_the_plain_format(tmp_path):
    config = write_config(tmp_path, "http://127.0.0.1:1/v1")
    student_dir = tmp_path / "run" / "student"
    (student_dir / "adapter").mkdir(parents=True)
    (student_dir / "manifest.json").write_text(json.dumps({"model_dir": "adapter"}))
    q = Question(id="q", question="What is 2 + 3?", answer="5", answer_type="number")

    plain_cfg = load_config(config, ["train.prompt_format=plain", *IN_PROCESS])
    endpoint = trained_student(plain_cfg, plain_cfg.run_dir)
    assert endpoint.chat_template is False and endpoint.model.endswith("adapter")
    request = rationale_request(Prompts(), q, plain=not endpoint.chat_template)
    content = request.messages[0]["content"]
    assert content.startswith("### Instruction:") and content.endswith("### Response:\n")
    assert "What is 2 + 3?" in content

    chat_cfg = load_config(config, IN_PROCESS)
    assert trained_student(chat_cfg, chat_cfg.run_dir).chat_template is True


def test_a_served_student_trained_again_is_asked_again(tmp_path):
    """eval.trained: the server keeps the model name, so the cache key holds the weights' stamp."""
    import asyncio

    from tests.stages.scripted_classroom import reply

    from mapd.stages import evaluate
    from mapd.testing.loopback import LoopbackServer

    with LoopbackServer(reply=reply) as server:
        served = {"name": "served", "model": "student-model", "base_url": server.base_url}
        config = write_config(tmp_path, server.base_url, eval__trained=served, eval__base=False)
        cfg = load_config(config)
        adapter = cfg.run_dir / "student" / "adapter"
        adapter.mkdir(parents=True)
        (adapter.parent / "manifest.json").write_text(json.dumps({"model_dir": "adapter"}))
        weights = adapter / "adapter_model.safetensors"
        weights.write_bytes(b"first training")

        asyncio.run(evaluate.run(cfg, cfg.run_dir))
        asked = len(server.requests)
        assert asked == len(evaluate.eval_questions(cfg)) > 0
        asyncio.run(evaluate.run(cfg, cfg.run_dir))
        assert len(server.requests) == asked  # the same weights: every reply from the cache

        weights.write_bytes(b"second training, other weights")
        asyncio.run(evaluate.run(cfg, cfg.run_dir))
        assert len(server.requests) == 2 * asked


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny random Llama with its chat tokenizer, as a local folder."""
    from tests.stages.train.toy_run import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory, tiny_base) -> Path:
    """A LoRA adapter saved on a tiny random Llama, as `mapd train` leaves it in student/."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tiny_base
    adapter = tmp_path_factory.mktemp("trained") / "adapter"
    lora = LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), lora).save_pretrained(adapter)
    AutoTokenizer.from_pretrained(base).save_pretrained(adapter)
    return adapter


def http_student_run(tmp_path: Path, base_url: str, adapter: Path, *overrides: str):
    """A run whose student is served over HTTP and has been trained into student/adapter."""
    config = write_config(tmp_path, base_url)
    cfg = load_config(config, ["eval.max_tokens=4", "student.device=cpu", *overrides])
    shutil.copytree(adapter, cfg.run_dir / "student" / "adapter")
    manifest = {"model_dir": "adapter", "merged_dir": None}
    (cfg.run_dir / "student" / "manifest.json").write_text(json.dumps(manifest))
    return cfg


def test_an_http_student_is_evaluated_trained_through_eval_trained(tmp_path, tiny_adapter):
    from mapd.stages import evaluate

    with LoopbackServer(reply=reply) as server:
        served = f"eval.trained={{name: served, model: student, base_url: {server.base_url}}}"
        cfg = http_student_run(tmp_path, server.base_url, tiny_adapter, served)
        summary = asyncio.run(evaluate.run(cfg, cfg.run_dir))
    n = summary["trained"]["n"]
    models = Counter(r["model"] for r in server.requests)
    assert models == {"student-model": n, "student": n}  # the base, then the served adapter
    assert summary["trained"]["model"] == "student"


def test_an_http_student_is_evaluated_trained_in_process(tmp_path, tiny_adapter):
    """No eval.trained: the adapter runs in-process on its base; the server sees the base only."""
    from mapd.stages import evaluate

    with LoopbackServer(reply=reply) as server:
        cfg = http_student_run(tmp_path, server.base_url, tiny_adapter)
        summary = asyncio.run(evaluate.run(cfg, cfg.run_dir))
    n = summary["trained"]["n"]
    assert Counter(r["model"] for r in server.requests) == {"student-model": n}
    trained = summary["trained"]
    assert trained["backend"] == "transformers"
    assert trained["model"] == str((cfg.run_dir / "student" / "adapter").resolve())
    assert summary["base"]["backend"] == "openai"


def test_a_trained_student_out_of_reach_stops_eval_before_any_request(tmp_path, tiny_adapter):
    """The adapter's base is not on this machine and eval.trained is not set: one line, exit 2,
    and not even the base is asked."""
    with LoopbackServer(reply=reply) as server:
        cfg = http_student_run(tmp_path, server.base_url, tiny_adapter)
        adapter_config = cfg.run_dir / "student" / "adapter" / "adapter_config.json"
        settings = json.loads(adapter_config.read_text())
        settings["base_model_name_or_path"] = str(tmp_path / "moved-away")
        adapter_config.write_text(json.dumps(settings))
        done = subprocess.run(
            [sys.executable, "-m", "mapd", "run", str(tmp_path / "config.yaml"), "--from", "eval"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        sent = len(server.requests)
    assert done.returncode == 2, done.stderr
    assert "eval.trained" in done.stderr and "Traceback" not in done.stderr
    assert sent == 0


def test_k_samples_over_http_carry_k_seeds(tmp_path):
    """eval.samples: k sends seed, seed + 1, ... so a server that honours the seed samples k
    different outputs to vote over."""
    from mapd.stages.evaluate import eval_questions, evaluate

    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url, seed=40)
        cfg = load_config(config, ["eval.samples=3", "eval.temperature=0.7"])
        questions = eval_questions(cfg)
        asyncio.run(evaluate(cfg, cfg.run_dir, "base", cfg.student, questions))
    seeds: dict[str, list[int]] = {}
    for r in server.requests:
        seeds.setdefault(r["messages"][-1]["content"], []).append(r["seed"])
    assert len(seeds) == len(questions) > 0
    assert all(sorted(s) == [40, 41, 42] for s in seeds.values())


def test_an_http_students_eval_from_before_is_run_again(tmp_path):
    """Its trained accuracy was the served base model's; other runs keep their fingerprints."""
    from mapd.stages import evaluate

    config = write_config(tmp_path, "http://127.0.0.1:1/v1")
    assert evaluate.settings(load_config(config))["trained_in_process"] is True
    served = "eval.trained={model: student, base_url: http://127.0.0.1:2/v1}"
    for overrides in (IN_PROCESS, [served]):
        assert set(evaluate.settings(load_config(config, overrides))) == {"exam", "eval"}


@pytest.mark.parametrize("batching", ["refill", "padded"])
def test_in_process_answers_cut_off_at_eval_max_tokens_are_counted(tmp_path, tiny_base, batching):
    """The tiny random model rarely says its end token: at eval.max_tokens=4 every answer
    reaches the limit, and metrics.json counts each one as cut off."""
    from mapd.stages.evaluate import eval_questions, evaluate

    student = [
        *IN_PROCESS,
        f"student.model={tiny_base}",
        "student.device=cpu",
        f"student.batching={batching}",
        "eval.max_tokens=4",
    ]
    cfg = load_config(write_config(tmp_path, "http://127.0.0.1:1/v1"), student)
    questions = eval_questions(cfg)
    metrics = asyncio.run(evaluate(cfg, cfg.run_dir, "base", cfg.student, questions))
    saved = json.loads((cfg.run_dir / "eval" / "base" / "metrics.json").read_text())
    assert metrics["cut_off"] == saved["cut_off"] == len(questions) > 0
    assert saved["max_tokens"] == 4 and saved["mean_output_tokens"] == 4

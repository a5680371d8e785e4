"""Evaluation helpers: majority vote, and asking a plain-format student in its own format."""

from __future__ import annotations

import json

from tests.stages.scripted_classroom import write_config

from mapd.config import load_config
from mapd.prompts import Prompts
from mapd.records import Question
from mapd.stages.evaluate import majority, trained_student
from mapd.stages.exam import rationale_request


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

    plain_cfg = load_config(config, ["train.prompt_format=plain", "student.backend=transformers"])
    endpoint = trained_student(plain_cfg, plain_cfg.run_dir)
    assert endpoint.chat_template is False and endpoint.model.endswith("adapter")
    request = rationale_request(Prompts(), q, plain=not endpoint.chat_template)
    content = request.messages[0]["content"]
    assert content.startswith("### Instruction:") and content.endswith("### Response:\n")
    assert "What is 2 + 3?" in content

    chat_cfg = load_config(config, ["student.backend=transformers"])
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

"""The whole loop with a tiny in-process student: exam, teach, review, build, train, eval, report."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tests.stages.scripted_classroom import reply, write_config
from tests.stages.train.toy_run import build_tiny_model

from mapd.config import load_config
from mapd.stages.pipeline import run_pipeline
from mapd.stages.report import markdown_report
from mapd.testing.loopback import LoopbackServer

TEACHERS = {"alice-model", "bob-model", "carol-model"}


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-student"))


def in_process(student: str, max_steps: int, *extra: str) -> list[str]:
    """Overrides that make the tiny model the in-process student, trained for a few steps."""
    return [
        "student.backend=transformers",
        "student.base_url=null",
        "student.weights=null",
        f"student.model={student}",
        "student.device=cpu",
        "student.sampling.max_tokens=8",
        "eval.max_tokens=8",
        f"train.max_steps={max_steps}",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.max_length=256",
        *extra,
    ]


def test_whole_loop_with_an_in_process_student(tmp_path, tiny_student):
    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url)
        overrides = in_process(tiny_student, 2)
        cfg = load_config(config, overrides)
        summaries = asyncio.run(run_pipeline(cfg))
        student_requests = [r for r in server.requests if r["model"] == "student-model"]
    run_dir = tmp_path / "run"
    assert not student_requests  # the student ran in-process
    assert summaries["exam"]["questions"] > 0
    assert summaries["train"]["steps"] == 2
    base = json.loads((run_dir / "eval" / "base" / "metrics.json").read_text())
    trained = json.loads((run_dir / "eval" / "trained" / "metrics.json").read_text())
    assert base["n"] == trained["n"] > 0
    assert trained["model"].endswith("adapter")
    predictions = (run_dir / "eval" / "trained" / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == trained["n"]
    assert (run_dir / "report.html").stat().st_size > 1000
    assert 'id="unlike-evals"' not in (run_dir / "report.html").read_text()  # both in-process
    assert (run_dir / "student" / "manifest.json").exists()


def test_two_rounds_examine_the_trained_student(tmp_path, tiny_student):
    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url)
        overrides = in_process(tiny_student, 1, "rounds=2", "eval.base=false")
        summaries = asyncio.run(run_pipeline(load_config(config, overrides)))
    round2 = tmp_path / "run" / "round-2"
    assert "round-2" in summaries
    cfg2 = load_config(round2 / "config.yaml")
    assert cfg2.student.model.endswith("merged")
    assert (round2 / "student" / "manifest.json").exists()
    assert (round2 / "eval" / "trained" / "metrics.json").exists()


def test_ablate_writes_every_row(tmp_path, tiny_student):
    from mapd.ablation import run_ablation

    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url)
        overrides = in_process(tiny_student, 1)
        root = asyncio.run(run_ablation(load_config(config, overrides)))
        sent = len(server.requests)
        # teaching and reviews are the same requests in every row, the cascade's too: paid once
        teach_calls = sum(
            "Student's answer" in r["messages"][-1]["content"] for r in server.requests
        )
    rows = (root / "ablation.csv").read_text().splitlines()
    names = [r.split(",")[0] for r in rows[1:]]
    assert names == [
        "untrained",
        "mapd",
        "mapd-alpha0",
        "mapd-answer-check",
        "committee-no-review",
        "cascade",
        "single-alice",
        "single-bob",
        "single-carol",
    ]
    mistakes = len((root / "mapd" / "seed-731" / "mistakes.jsonl").read_text().splitlines())
    assert teach_calls == 3 * mistakes
    assert sent > 0
    md = (root / "ablation.md").read_text()
    assert "single teacher carol without review" in md and "untrained student" in md


def test_an_http_student_is_trained_then_examined_and_evaluated_in_process(tmp_path, tiny_student):
    """The student is served over HTTP (under its folder's path, as `transformers serve` names
    it) and trained here: the trained student of round 1 (eval) and round 2 (exam and eval)
    runs in-process; the server is asked for the base model only, never for a trained folder."""

    def served(request):
        if request["model"] == str(tiny_student):
            return "I guess. The answer is 1."
        return reply(request)

    with LoopbackServer(reply=served) as server:
        config = write_config(tmp_path, server.base_url)
        overrides = [
            o
            for o in in_process(tiny_student, 1, "rounds=2")
            if o not in ("student.backend=transformers", "student.base_url=null")
        ]
        cfg = load_config(config, overrides)
        assert cfg.student.backend == "openai"
        summaries = asyncio.run(run_pipeline(cfg))
        to_student = [r for r in server.requests if r["model"] not in TEACHERS]
    exam, base = summaries["exam"]["questions"], summaries["eval"]["base"]["n"]
    assert {r["model"] for r in to_student} == {str(tiny_student)}
    assert len(to_student) == exam + base  # round 1's exam and base eval, nothing after
    trained = summaries["eval"]["trained"]
    assert (trained["backend"], Path(trained["model"]).name) == ("transformers", "merged")
    round2 = load_config(tmp_path / "run" / "round-2" / "config.yaml")
    assert round2.student.backend == "transformers" and round2.eval.trained is None
    assert summaries["round-2"]["exam"]["questions"] == exam
    assert summaries["round-2"]["eval"]["base"]["model"] == round2.student.model


def test_a_served_student_named_otherwise_is_trained_from_its_weights(tmp_path, tiny_student):
    """vLLM's --served-model-name, an Ollama tag: the server answers to `student-model`, and
    `student.weights` names what training loads; the adapter is of those weights."""
    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url)
        served = ("student.backend", "student.base_url", "student.weights", "student.model")
        overrides = [o for o in in_process(tiny_student, 1) if not o.startswith(served)]
        cfg = load_config(config, [*overrides, f"student.weights={tiny_student}"])
        summaries = asyncio.run(run_pipeline(cfg))
        asked = {r["model"] for r in server.requests} - TEACHERS
    assert asked == {"student-model"}  # the server is asked by its own name only
    student_dir = tmp_path / "run" / "student"
    assert json.loads((student_dir / "manifest.json").read_text())["base_model"] == str(
        tiny_student
    )
    adapter = json.loads((student_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_student)
    assert summaries["eval"]["trained"]["n"] == summaries["eval"]["base"]["n"] > 0
    # base on the server, trained in-process: the report says the two were asked differently
    report = (tmp_path / "run" / "report.html").read_text()
    assert 'id="unlike-evals"' in report and "asked on a server (student-model)" in report
    assert "not asked the same way" in markdown_report(tmp_path / "run")

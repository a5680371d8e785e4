"""A trained student is changed only by a command that trains; every command records its
settings in the run folder's config.yaml; a changed setting is named, not silently acted on.

Through the real `mapd` entry point, on a folder made by `mapd import-release` and a tiny
random student.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.stages.train.toy_run import build_tiny_model

from mapd.config import load_config
from mapd.stages.changes import Change, changed_settings, flat, recorded_config
from mapd.stages.train import settings as train_settings

FIXTURES = Path(__file__).parents[1] / "fixtures"
RELEASE = sorted((FIXTURES / "release").glob("*.json"))


def mapd(*args: str | Path, merged: bool = False) -> subprocess.CompletedProcess[str]:
    """The installed command; `merged` puts stderr into stdout, in the order written."""
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT} if merged else {}
    return subprocess.run(
        [sys.executable, "-m", "mapd", *map(str, args)],
        capture_output=not merged,
        text=True,
        timeout=600,
        **streams,
    )


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def student_files(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted((run / "student").rglob("*")) if p.is_file()}


@pytest.fixture
def release_run(tmp_path, tiny_model_dir) -> Path:
    """An imported release folder, built, its student a tiny model asked on local SVAMP."""
    run = tmp_path / "rel"
    done = mapd("import-release", "--task", "svamp", "--output", run, *RELEASE)
    assert done.returncode == 0, done.stderr
    config = run / "config.yaml"
    data = yaml.safe_load(config.read_text())
    data["student"].update(model=str(tiny_model_dir), name="tiny")
    data["task"].update(source="local", path=str(FIXTURES / "svamp"))
    data["eval"].update(max_tokens=4)
    data["train"].update(batch_size=2, grad_accum=1)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    done = mapd("build", config)
    assert done.returncode == 0, done.stderr
    return run


def test_flat_numbers_list_items():
    data = {"train": {"lr": 1}, "teachers": [{"name": "a"}], "x": [1, 2]}
    assert flat(data) == {"train.lr": 1, "teachers.0.name": "a", "x": [1, 2]}


def test_only_the_settings_a_stage_depends_on_are_named(tiny_model_dir, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "task": {"name": "svamp", "source": "local", "path": str(FIXTURES / "svamp")},
                "student": {"model": str(tiny_model_dir)},
                "teachers": [
                    {"name": n, "model": str(tiny_model_dir), "backend": "transformers"}
                    for n in "ab"
                ],
                "output_dir": str(tmp_path / "run"),
            }
        )
    )
    then = load_config(path, ["train.lr=1e-5"])
    now = load_config(path, ["train.lr=2e-5", "eval.limit=3", "train.logging_steps=7"])
    manifest = {"config": recorded_config(then)}
    assert changed_settings(now, manifest, train_settings) == [Change("train.lr", 1e-5, 2e-5)]
    assert changed_settings(now, {}, train_settings) is None  # an older folder: no record


@pytest.mark.slow
def test_train_keeps_its_overrides_and_eval_evaluates_that_student(release_run):
    """The issue's case: `mapd train CFG K=V` then `mapd eval CFG`: before, eval found the
    settings changed, removed the checkpoints and trained again with the preset's settings."""
    config = release_run / "config.yaml"
    done = mapd("train", config, "train.method=lora", "train.max_steps=2")
    assert done.returncode == 0, done.stderr
    assert "train.max_steps=2 is saved into it" in done.stderr
    recorded = yaml.safe_load(config.read_text())["train"]
    assert (recorded["method"], recorded["max_steps"]) == ("lora", 2)
    trained = student_files(release_run)
    assert any(p.parent.name == "adapter" for p in trained)

    done = mapd("eval", config, "eval.limit=4")
    assert done.returncode == 0, done.stderr
    assert "removing old checkpoints" not in done.stdout + done.stderr
    assert student_files(release_run) == trained
    assert (release_run / "eval" / "trained" / "metrics.json").exists()

    # a setting the student was not trained with: eval stops before any work, naming it
    # with both ways forward, and saves nothing
    before_config = config.read_text()
    done = mapd("eval", config, "train.lr=3e-4", "eval.limit=2")
    assert done.returncode == 2, done.stderr
    assert "train.lr: 1.0e-05 for the student, 0.0003 now" in done.stderr, done.stderr
    assert "mapd train" in done.stderr and "train.lr=1.0e-05" in done.stderr
    assert "Traceback" not in done.stderr
    assert student_files(release_run) == trained
    assert config.read_text() == before_config
    # nor does `mapd run --from eval`, which would record the student under settings it
    # was never trained with
    done = mapd("run", config, "train.lr=3e-4", "eval.limit=2", "--from", "eval")
    assert done.returncode == 2 and "train.lr: 1.0e-05 for the student" in done.stderr
    assert config.read_text() == before_config

    # a given config other than the folder's own: its settings are named the same way
    other = release_run.parent / "other.yaml"
    data = yaml.safe_load(before_config)
    data.update(output_dir=str(release_run))
    data["train"].update(method="full", max_steps=None)
    other.write_text(yaml.safe_dump(data))
    done = mapd("eval", other, "eval.limit=4")
    assert done.returncode == 2
    assert "train.method: lora for the student, full now" in done.stderr, done.stderr
    assert "train.max_steps: 2 for the student, null now" in done.stderr
    assert student_files(release_run) == trained


@pytest.mark.slow
def test_run_says_before_it_trains_again(release_run):
    config = release_run / "config.yaml"
    assert mapd("train", config, "train.method=lora", "train.max_steps=1").returncode == 0
    done = mapd("run", config, "train.max_steps=2", "--until", "train", merged=True)
    assert done.returncode == 0, done.stdout
    said = done.stdout
    assert "trained again when its stage comes" in said and "train.max_steps: 1" in said
    assert said.index("trained again") < said.index("removing old checkpoints")

"""`mapd settings` and docs/config.md: every setting of the config, with its default and help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mapd.config import RunConfig
from mapd.settings_doc import all_settings, settings_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_docs_config_md_is_current():
    assert (ROOT / "docs/config.md").read_text() == settings_markdown(), (
        "regenerate it: mapd settings --markdown > docs/config.md"
    )


def test_every_setting_is_listed_with_its_default():
    found = {s.path: s for s in all_settings()}
    assert found["train.lora.r"].default == "16" and found["train.lora.r"].help == "LoRA rank."
    assert found["teachers.N.limits.rpm"].kind == "float"
    assert found["cache"].kind == "use | refresh | off" and found["cache"].default == "use"
    assert found["task.name"].default == "required"
    assert found["teachers.N.batch"].kind == "bool | openai | anthropic"
    assert set(RunConfig.model_fields) <= set(found)
    # a section's own default, not its class's: the student samples cooler than a teacher
    assert found["student.sampling.temperature"].default == "0.3"
    assert found["teachers.N.sampling.temperature"].default == "0.8"
    assert found["eval.trained"].default == "-" and "vLLM" in found["eval.trained"].help


def test_the_command_lists_a_section_and_refuses_an_unknown_prefix():
    listed = subprocess.run(
        [sys.executable, "-m", "mapd", "settings", "train.lora"], capture_output=True, text=True
    )
    assert listed.returncode == 0 and "train.lora.dropout" in listed.stdout
    assert "train.lr" not in listed.stdout
    indexed = subprocess.run(
        [sys.executable, "-m", "mapd", "settings", "teachers.0.limits"],
        capture_output=True,
        text=True,
    )
    assert indexed.returncode == 0 and "teachers.N.limits.rpm" in indexed.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "mapd", "settings", "trai"], capture_output=True, text=True
    )
    assert unknown.returncode == 2 and "no setting 'trai' and none under it" in unknown.stderr
    bare = subprocess.run(
        [sys.executable, "-m", "mapd", "settings", "weights"], capture_output=True, text=True
    )
    assert bare.returncode == 2 and "did you mean student.weights?" in bare.stderr

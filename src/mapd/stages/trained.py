"""Where the trained student is and how it is asked: an endpoint serving it, or in-process.

    saved = saved_student(run_dir)                # reads student/manifest.json
    endpoint = trained_student(cfg, run_dir)      # what eval asks as "trained"
    cfg2 = next_round_student(cfg, previous_dir)  # what round 2+ examines and trains

A server started with the base model cannot answer as the trained student: asked for a
local folder as model name, llama.cpp answers as the base (a silently wrong accuracy),
vLLM and `transformers serve` refuse. So the trained weights are reached through
`eval.trained` (a server that loaded the adapter, e.g. vLLM `--lora-modules NAME=PATH`),
or in-process from the saved folder; a local path is never sent as a model name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapd.config import ModelEndpoint, RunConfig
from mapd.errors import MapdError
from mapd.rundir import read_json


@dataclass(frozen=True)
class SavedStudent:
    """The trained student's folders: `trained` is what training wrote (adapter/ or model/),
    `weights` what loads on its own (merged/ when there is one, else `trained`)."""

    trained: Path
    weights: Path


def saved_student(run_dir: Path) -> SavedStudent:
    """The folders that student/manifest.json names (written by `mapd train`)."""
    student_dir = run_dir / "student"
    manifest = read_json(student_dir / "manifest.json")
    trained = (student_dir / manifest["model_dir"]).resolve()
    merged = manifest.get("merged_dir")
    weights = (student_dir / merged).resolve() if merged else trained
    return SavedStudent(trained, weights)


def in_process(student: ModelEndpoint, folder: Path, **update: Any) -> ModelEndpoint:
    """`student` loaded in-process from `folder`; its HTTP settings are dropped."""
    http = {"base_url": None, "api_key_env": None, "headers": {}}
    if "weights" in type(student).model_fields:
        http["weights"] = None
    return student.model_copy(
        update={"model": str(folder), "backend": "transformers", **http, **update}
    )


def loaded_here(endpoint: ModelEndpoint) -> None:
    """Load the in-process trained student now, before any request of the stage is sent;
    a base model that is not on this machine stops here, naming the way out."""
    from mapd.llm.model_loading import load_model

    try:
        load_model(endpoint.model, endpoint.device, endpoint.dtype)
    except MapdError as exc:
        raise MapdError(
            f"the student is served over HTTP and eval.trained is not set, and the trained "
            f"student cannot be loaded here: {exc.message}",
            "serve the adapter (e.g. vllm serve BASE --enable-lora --lora-modules "
            f"student={endpoint.model}) and set eval.trained: {{model: student, base_url: ...}}",
        ) from None


def trained_student(cfg: RunConfig, run_dir: Path) -> ModelEndpoint:
    """The endpoint that answers as the trained student: `eval.trained` when set, else the
    saved folder in-process (loaded at once when the student was served over HTTP)."""
    if cfg.eval.trained is not None:
        return cfg.eval.trained
    saved = saved_student(run_dir)
    if not saved.weights.exists():
        raise MapdError(f"trained student {saved.weights} not found", "run mapd train first")
    # a student trained on the paper's plain instruction format is asked in that format
    chat = cfg.train.prompt_format == "chat" and cfg.student.chat_template
    endpoint = in_process(
        cfg.student, saved.weights, name=f"{cfg.student.name}-trained", chat_template=chat
    )
    if cfg.student.backend != "transformers":
        loaded_here(endpoint)
    return endpoint


def next_round_student(cfg: RunConfig, previous_dir: Path) -> dict[str, Any]:
    """The student of the next round, as config data: the previous round's trained weights,
    in-process. A server holding the base model cannot answer for them, and `eval.trained`
    serves the previous round's adapter, so neither is used after round 1."""
    folder = saved_student(previous_dir).weights
    return in_process(cfg.student, folder).model_dump(mode="json")

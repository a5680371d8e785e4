"""Where the trained student is and how it is asked: an endpoint serving it, or in-process.

    saved = saved_student(run_dir)                # reads student/manifest.json
    endpoint = trained_student(cfg, run_dir)      # what eval asks as "trained"
    cfg2 = next_round_student(cfg, previous_dir)  # what round 2+ examines and trains

A server started with the base model cannot answer as the trained student: asked for a
local folder as model name, llama.cpp answers as the base (a silently wrong accuracy),
vLLM and `transformers serve` refuse. So the trained weights are reached through
`eval.trained` (a server that loaded the adapter, e.g. vLLM `--lora-modules NAME=PATH`),
or in-process from the saved folder; a local path is never sent as a model name.

A vLLM server answers a name with the adapter it loaded under it, also after the student
was trained again. With `eval.trained.adapter: load` the adapter is loaded under a name
made from its content (`mapd.llm.vllm_adapters`); with a name of the user's, the server's
own word on where it loaded it from (GET /models, `root`) must not name another folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapd.config import ModelEndpoint, RunConfig
from mapd.config.schema import TrainedEndpoint
from mapd.errors import MapdError
from mapd.llm.vllm_adapters import (
    RUNTIME_FLAG,
    adapter_digest,
    adapter_name,
    load_adapter,
    served_roots,
)
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
    """`student` loaded in-process from `folder` (on vLLM's engine for a vllm student, else
    transformers'); its HTTP settings are dropped."""
    http = {"base_url": None, "api_key_env": None, "headers": {}}
    backend = "vllm" if student.backend == "vllm" else "transformers"
    if "weights" in type(student).model_fields:
        http["weights"] = None
    return student.model_copy(update={"model": str(folder), "backend": backend, **http, **update})


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
        return served_trained(cfg.eval.trained, cfg.student.name, run_dir)
    saved = saved_student(run_dir)
    if not saved.weights.exists():
        raise MapdError(f"trained student {saved.weights} not found", "run mapd train first")
    # a student trained on the paper's plain instruction format is asked in that format
    chat = cfg.train.prompt_format == "chat" and cfg.student.chat_template
    endpoint = in_process(
        cfg.student, saved.weights, name=f"{cfg.student.name}-trained", chat_template=chat
    )
    if cfg.student.backend == "openai":
        loaded_here(endpoint)
    return endpoint


def served_trained(endpoint: TrainedEndpoint, student_name: str, run_dir: Path) -> ModelEndpoint:
    """`eval.trained`, asked for this run's adapter: loaded into the server under a name of its
    content (adapter: load), or checked against where the server says it loaded the name."""
    if not (run_dir / "student" / "manifest.json").exists():
        raise MapdError(f"no trained student in {run_dir / 'student'}", "run mapd train first")
    saved = saved_student(run_dir)
    if endpoint.adapter == "load":
        if not (saved.trained / "adapter_config.json").is_file():
            raise MapdError(
                f"eval.trained.adapter is load, but {saved.trained} is no LoRA adapter",
                "serve the trained model and set eval.trained.adapter: served, or train with "
                "train.method: lora",
            )
        name = adapter_name(student_name, saved.trained)
        for url in endpoint.base_urls:
            load_adapter(endpoint, url, name, saved.trained)
        endpoint = endpoint.model_copy(update={"model": name})
    for url in endpoint.base_urls:
        check_served(endpoint, url, saved, told=endpoint.adapter == "load")
    return endpoint


def check_served(endpoint: TrainedEndpoint, url: str, saved: SavedStudent, told: bool) -> None:
    """Stop when the server at `url` says it loaded `endpoint.model` from other weights than
    this run's; say so when it cannot be proven. `told`: the name itself holds the digest."""
    model = endpoint.model
    root = served_roots(endpoint, url).get(model)
    same = same_weights(root, saved) if root else None
    if same is False:
        raise MapdError(
            f"eval.trained: the server at {url} serves {model} from {root}, not from this "
            f"run's {saved.trained}",
            f"start it with --lora-modules {model}={saved.trained}, or let eval load the "
            f"adapter itself: eval.trained.adapter: load (vLLM with {RUNTIME_FLAG})",
        )
    if same is None:
        said = f"loaded it from {root}, not on this machine" if root else "does not say whence"
        note(f"cannot prove that {model} at {url} is this run's trained student: the server {said}")
    elif not told:
        note(
            f"{model} at {url} is loaded from this run's {saved.trained}; a server started "
            "before the last training answers with the adapter it loaded then "
            "(eval.trained.adapter: load asks for this training's adapter by its digest)"
        )


def same_weights(root: str, saved: SavedStudent) -> bool | None:
    """Whether a server's `root` is this run's trained weights: the same folder or a copy of
    the adapter (a model folder, such as the base, is never hashed); None when it is not a
    folder on this machine (a hub id, another machine's)."""
    folder = Path(root).expanduser()
    folder = folder if folder.is_absolute() else Path.cwd() / folder
    if not folder.is_dir():
        return None
    if folder.resolve() in (saved.trained, saved.weights):
        return True
    adapters = all((f / "adapter_config.json").is_file() for f in (folder, saved.trained))
    return adapters and adapter_digest(folder) == adapter_digest(saved.trained)


def note(text: str) -> None:
    print(f"note: eval.trained: {text}", file=sys.stderr, flush=True)


def next_round_student(cfg: RunConfig, previous_dir: Path) -> dict[str, Any]:
    """The student of the next round, as config data: the previous round's trained weights,
    in-process. A server holding the base model cannot answer for them, and `eval.trained`
    serves the previous round's adapter, so neither is used after round 1."""
    folder = saved_student(previous_dir).weights
    return in_process(cfg.student, folder).model_dump(mode="json")

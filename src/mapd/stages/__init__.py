"""The stages, one module or package each, in the order `mapd run` runs them:
exam, teach, review, build, train, eval (module `evaluate`), report.

Each stage reads earlier stages' files from the run folder, writes its own atomically, and is
a module that the `Stage` protocol describes; `pipeline.py` runs them, checks their
fingerprints and writes their manifests.
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

from mapd.config import RunConfig


class Stage(Protocol):
    """What the pipeline needs of a stage module."""

    NAME: str  # as the CLI names it (`mapd run --from NAME`)
    INPUTS: list[str]  # run-folder files it reads; their hashes enter its fingerprint
    OUTPUTS: list[str]  # files whose hashes its manifest records
    ALWAYS_RUNS: bool  # no fingerprint, no manifest: it shows whatever the folder holds

    def settings(self, cfg: RunConfig) -> dict[str, Any]:
        """The settings its outputs depend on (the rest of its fingerprint)."""
        ...

    def run(self, cfg: RunConfig, run_dir: Path) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Do the work; return the summary kept in its manifest."""
        ...


def stage_inputs(stage: Stage, cfg: RunConfig) -> list[str]:
    """Its INPUTS and those its settings add (a module's `extra_inputs(cfg)`, e.g. the
    review stage of a cascade, which replays the reviews and feedback the teach stage asked)."""
    extra = getattr(stage, "extra_inputs", None)
    return [*stage.INPUTS, *(extra(cfg) if extra else [])]


def stage_outputs(stage: Stage, cfg: RunConfig) -> list[str]:
    """Its OUTPUTS and those its settings add (a module's `extra_outputs(cfg)`)."""
    extra = getattr(stage, "extra_outputs", None)
    return [*stage.OUTPUTS, *(extra(cfg) if extra else [])]

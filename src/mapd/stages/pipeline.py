"""Run the stages in order, skipping the finished ones whose inputs and settings are unchanged.

    summaries = asyncio.run(run_pipeline(cfg, until="build"))

The run folder keeps the resolved config as `config.yaml` and one manifest per finished
stage in `manifests/`. A stage whose manifest says it was imported (`mapd import-release`)
is never re-run. `start` forces a re-run from that stage on.
"""

from __future__ import annotations

import importlib
import inspect
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console

from mapd.config import RunConfig, dump_run_config
from mapd.errors import MapdError
from mapd.stages.rundir import (
    fingerprint,
    load_manifest,
    run_lock,
    stage_is_done,
    write_manifest,
    write_text_atomic,
)

STAGES = ["exam", "teach", "review", "build"]
console = Console(stderr=True, soft_wrap=True)


def stage_module(name: str) -> ModuleType:
    return importlib.import_module(f"mapd.stages.{name}")


def select_stages(start: str | None, until: str | None) -> list[str]:
    for name in (start, until):
        if name is not None and name not in STAGES:
            raise MapdError(f"unknown stage {name!r}", f"stages: {', '.join(STAGES)}")
    first = STAGES.index(start) if start else 0
    last = STAGES.index(until) if until else len(STAGES) - 1
    if first > last:
        raise MapdError(f"--from {start} comes after --until {until}", "swap them")
    return STAGES[first : last + 1]


def _is_imported(run_dir: Path, stage: str) -> bool:
    manifest = load_manifest(run_dir, stage)
    return bool(manifest and manifest.get("imported"))


async def run_stage(
    cfg: RunConfig, run_dir: Path, name: str, force: bool = False
) -> dict[str, Any]:
    """Run one stage unless it is finished and unchanged; return its summary."""
    module = stage_module(name)
    if _is_imported(run_dir, name):
        console.print(f"[dim]{name}: imported, kept as is[/]")
        return (load_manifest(run_dir, name) or {}).get("summary", {})
    missing = [i for i in module.INPUTS if not (run_dir / i).exists()]
    if missing:
        raise MapdError(
            f"{name}: {run_dir / missing[0]} is missing",
            f"run the earlier stages first: mapd run {run_dir / 'config.yaml'} --until {name}",
        )
    fp = fingerprint(module.settings(cfg), [run_dir / i for i in module.INPUTS])
    if not force and stage_is_done(run_dir, name, fp):
        summary = (load_manifest(run_dir, name) or {}).get("summary", {})
        console.print(f"[dim]{name}: finished earlier, inputs and settings unchanged; skipped[/]")
        return summary
    started = time.time()
    console.print(f"[bold]{name}[/] ...")
    result = module.run(cfg, run_dir)
    summary = await result if inspect.isawaitable(result) else result
    write_manifest(run_dir, name, fp, module.OUTPUTS, summary, started)
    console.print(
        f"[green]{name}[/] done in {time.time() - started:.1f}s: {headline(name, summary)}"
    )
    return summary


def headline(name: str, s: dict[str, Any]) -> str:
    """The one line printed when a stage finishes."""
    if name == "exam":
        return f"{s['questions']} questions, accuracy {s['accuracy']}, {s['mistakes']} mistakes"
    if name == "teach":
        return f"{s['feedback']} feedback, {s['rationales']} rationales"
    if name == "review":
        per = ", ".join(
            f"{t} {c.get('accepted', 0)}/{c['rationales']}" for t, c in s["per_teacher"].items()
        )
        return (
            f"{s['accepted']} of {s['rationales']} rationales accepted ({per}); "
            f"{s['invalid_reviews']} invalid reviews; reasons {json.dumps(s['reasons'])}"
        )
    if name == "build":
        return (
            f"{s['feedback_examples']} feedback + {s['rationale_examples']} rationale examples "
            f"from {s['mistakes_used']} mistakes; {s['dropped_no_accepted_rationale']} dropped"
        )
    return json.dumps(s)[:200]


async def run_pipeline(
    cfg: RunConfig, start: str | None = None, until: str | None = None
) -> dict[str, dict[str, Any]]:
    """Run the selected stages under the run-folder lock; `start` forces a re-run from there."""
    run_dir = cfg.run_dir
    stages = select_stages(start, until)
    with run_lock(run_dir):
        write_text_atomic(run_dir / "config.yaml", dump_run_config(cfg))
        return {
            name: await run_stage(cfg, run_dir, name, force=start is not None and name == stages[0])
            for name in stages
        }

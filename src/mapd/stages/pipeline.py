"""Run the stages in order, skipping the finished ones whose inputs and settings are unchanged.

    summaries = asyncio.run(run_pipeline(cfg, until="build"))

The run folder keeps the resolved config as `config.yaml` and one manifest per finished
stage in `manifests/`; this module checks the stages' fingerprints and writes their manifests
(`mapd train` runs the train stage alone through `train_student`; `mapd import-release`
writes the manifests of imported stages, and `mapd ablate` those of its untrained row). A
stage whose manifest says it was imported (`mapd import-release`) is never re-run. `start`
forces a re-run from that stage on.
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from mapd.config import RunConfig, dump_run_config, validate_config
from mapd.errors import MapdError
from mapd.rundir import (
    fingerprint,
    load_manifest,
    run_lock,
    stage_is_done,
    write_manifest,
    write_text_atomic,
)
from mapd.stages import (
    Stage,
    build,
    evaluate,
    exam,
    report,
    review,
    stage_inputs,
    stage_outputs,
    teach,
    train,
)
from mapd.stages.changes import MISSING, Change, changed_settings, recorded_config
from mapd.stages.trained import next_round_student

# the flow, in order; a module satisfies `Stage`
STAGES: dict[str, Stage] = {
    s.NAME: s for s in (exam, teach, review, build, train, evaluate, report)
}
console = Console(stderr=True, soft_wrap=True)


def select_stages(start: str | None, until: str | None) -> list[str]:
    for name in (start, until):
        if name is not None and name not in STAGES:
            raise MapdError(f"unknown stage {name!r}", f"stages: {', '.join(STAGES)}")
    names = list(STAGES)
    first = names.index(start) if start else 0
    last = names.index(until) if until else len(names) - 1
    if first > last:
        raise MapdError(f"--from {start} comes after --until {until}", "swap them")
    return names[first : last + 1]


def _is_imported(run_dir: Path, stage: str) -> bool:
    manifest = load_manifest(run_dir, stage)
    return bool(manifest and manifest.get("imported"))


def stage_fingerprint(cfg: RunConfig, run_dir: Path, name: str) -> str:
    stage = STAGES[name]
    return fingerprint(stage.settings(cfg), [run_dir / i for i in stage_inputs(stage, cfg)])


def is_current(cfg: RunConfig, run_dir: Path, name: str) -> bool:
    """Whether stage `name` of `run_dir` is imported, or finished with these settings and inputs."""
    return _is_imported(run_dir, name) or stage_is_done(
        run_dir, name, stage_fingerprint(cfg, run_dir, name)
    )


async def run_stage(
    cfg: RunConfig, run_dir: Path, name: str, force: bool = False
) -> dict[str, Any]:
    """Run one stage unless it is finished and unchanged; return its summary."""
    stage = STAGES[name]
    if stage.ALWAYS_RUNS:
        summary = await _run(stage, cfg, run_dir)
        console.print(f"[green]{name}[/]: {headline(name, summary)}")
        return summary
    if _is_imported(run_dir, name):
        console.print(f"[dim]{name}: imported, kept as is[/]")
        return (load_manifest(run_dir, name) or {}).get("summary", {})
    missing = [i for i in stage_inputs(stage, cfg) if not (run_dir / i).exists()]
    if missing:
        raise MapdError(
            f"{name}: {run_dir / missing[0]} is missing",
            f"run the earlier stages first: mapd run {run_dir / 'config.yaml'} --until {name}",
        )
    fp = stage_fingerprint(cfg, run_dir, name)
    if not force and stage_is_done(run_dir, name, fp):
        summary = (load_manifest(run_dir, name) or {}).get("summary", {})
        console.print(f"[dim]{name}: finished earlier, inputs and settings unchanged; skipped[/]")
        return summary
    started = time.time()
    console.print(f"[bold]{name}[/] ...")
    summary = await _run(stage, cfg, run_dir)
    outputs = stage_outputs(stage, cfg)
    write_manifest(run_dir, name, fp, outputs, summary, started, recorded_config(cfg))
    console.print(
        f"[green]{name}[/] done in {time.time() - started:.1f}s: {headline(name, summary)}"
    )
    return summary


def train_student(
    cfg: RunConfig, run_dir: Path | None = None, callbacks: list[Any] | None = None
) -> dict[str, Any]:
    """`mapd train`: the train stage alone, with the same fingerprint check and manifest as in
    `mapd run`. No run lock: under `accelerate launch` every process runs this, and only the
    main one writes the manifest."""
    from mapd.stages.train.stage import run as fit  # loads torch

    run_dir = Path(run_dir or cfg.run_dir)
    fp = stage_fingerprint(cfg, run_dir, train.NAME)
    data_path = run_dir / train.INPUTS[0]
    if not data_path.exists():
        raise MapdError(
            f"{data_path} not found: the training set is built first",
            f"mapd build {run_dir / 'config.yaml' if (run_dir / 'config.yaml').exists() else 'CONFIG'}"
            " (it runs the exam, teaching and review first if needed)",
        )
    main_process = os.environ.get("RANK", "0") == "0"  # of a distributed launch
    if main_process:  # the folder's record of its settings, as every command keeps it
        write_text_atomic(run_dir / "config.yaml", dump_run_config(cfg))
    if stage_is_done(run_dir, train.NAME, fp):
        console.print(
            f"{run_dir / 'student'} is already trained with these settings; delete it to retrain"
        )
        return (load_manifest(run_dir, train.NAME) or {}).get("summary", {}) | {"skipped": True}
    if main_process and (changes := student_changes(cfg, run_dir)[0]):
        console.print(
            f"note: the student in {run_dir / 'student'} was trained otherwise; training "
            "again:\n  " + "\n  ".join(changes),
            highlight=False,
            markup=False,
        )
    started = time.time()
    summary = fit(cfg, run_dir, callbacks)
    if main_process:
        write_manifest(
            run_dir, train.NAME, fp, train.OUTPUTS, summary, started, recorded_config(cfg)
        )
    return summary


def student_changes(
    cfg: RunConfig, run_dir: Path | None = None, finished_only: bool = False
) -> tuple[list[str], list[Change] | None]:
    """Why the trained student in `run_dir` is not what `cfg` would train: one line per
    setting that differs, or per stage up to train that is not current for another reason;
    and the changes as overrides that describe the student (None when they cannot all be
    given). Empty when there is no trained student, or when `cfg` describes it.
    `finished_only` leaves out stages that never finished here (a student made elsewhere)."""
    run_dir = Path(run_dir or cfg.run_dir)
    if not (run_dir / "student" / "manifest.json").exists():
        return [], []
    lines: list[str] = []
    found: dict[str, Change] = {}  # by key: teach and review name a teacher's change alike
    complete = True
    for name in list(STAGES)[: list(STAGES).index(train.NAME) + 1]:
        manifest = load_manifest(run_dir, name)
        if (manifest is None and finished_only) or is_current(cfg, run_dir, name):
            continue
        changes = changed_settings(cfg, manifest, STAGES[name].settings)
        if manifest is None:
            lines.append(f"{name}: not finished in this folder")
            complete = False
        elif changes is None:
            lines.append(f"{name}: settings or inputs differ (its record predates named settings)")
            complete = False
        elif changes:
            new = [c for c in changes if c.key not in found]
            found.update((c.key, c) for c in new)
            lines += [c.line("for the student") for c in new]
        elif not lines:  # the first stage whose files changed says so; the rest follow from it
            inputs = ", ".join(stage_inputs(STAGES[name], cfg))
            lines.append(
                f"{name}: its {'inputs or ' if inputs else ''}outputs changed since it ran"
            )
    describable = complete and all(c.then is not MISSING for c in found.values())
    return lines, list(found.values()) if describable else None


def check_student(
    cfg: RunConfig, stages: list[str], retrain: bool, config_path: str | Path | None = None
) -> list[str]:
    """What the selected stages may do to the trained student. A run that trains with
    `retrain` gets the differences back, to say before anything runs; one that would evaluate
    (or, without `retrain`, train again) a student the config no longer describes stops
    here, naming each difference, with both ways forward."""
    if train.NAME in stages:
        lines, overrides = student_changes(cfg)
        if retrain:
            return lines
    elif evaluate.NAME in stages:  # --from eval: the student as it is, under this config
        lines, overrides = student_changes(cfg, finished_only=True)
    else:
        return []
    if not lines:
        return []
    config = config_path or cfg.run_dir / "config.yaml"
    back = " ".join(shlex.quote(c.override()) for c in overrides or [])
    raise MapdError(
        f"the student in {cfg.run_dir / 'student'} was trained otherwise than this config "
        "says, so it is not evaluated (nothing was changed):\n  " + "\n  ".join(lines),
        f"train it again with this config: mapd train {config}"
        + (f"; or evaluate it as trained: mapd eval {config} {back}" if back else ""),
    )


async def _run(stage: Stage, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    try:
        result = stage.run(cfg, run_dir)
        return await result if inspect.isawaitable(result) else result
    finally:
        # vLLM engines stay up through a stage (eval's untrained and trained student share
        # one) and are shut down at its end, so that the next stage (training) has the memory
        if vllm := sys.modules.get("mapd.llm.vllm_backend"):
            vllm.close_idle_engines()


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
    if name == "train":
        losses = ", ".join(f"{k} {v:.4f}" for k, v in s.get("final_losses", {}).items())
        return f"{s.get('steps')} steps; final {losses or 'losses not logged'}"
    if name == "eval":
        return ", ".join(f"{label} accuracy {m['accuracy']} (n={m['n']})" for label, m in s.items())
    if name == "report":
        return str(s["path"])
    if name == "build":
        return (
            f"{s['feedback_examples']} feedback + {s['rationale_examples']} rationale examples "
            f"from {s['mistakes_used']} mistakes; {s['dropped_no_accepted_rationale']} dropped"
        )
    return json.dumps(s)[:200]


def next_round_config(cfg: RunConfig, previous_dir: Path, round_no: int) -> RunConfig:
    """Round `round_no` examines and teaches the student trained in the previous round,
    in-process (see `next_round_student`)."""
    data = cfg.model_dump(mode="json")
    data["student"] = next_round_student(cfg, previous_dir)
    data["eval"]["trained"] = None
    data["output_dir"] = str(cfg.run_dir / f"round-{round_no}")
    data["rounds"] = 1
    return validate_config(data, source=f"round {round_no}")


async def run_round(cfg: RunConfig, stages: list[str], start: str | None) -> dict[str, Any]:
    run_dir = cfg.run_dir
    write_text_atomic(run_dir / "config.yaml", dump_run_config(cfg))
    summaries: dict[str, Any] = {}
    name = stages[0]
    try:
        for name in stages:
            summaries[name] = await run_stage(
                cfg, run_dir, name, force=start is not None and name == start
            )
    except Exception as exc:
        if name != report.NAME and (report.NAME in stages or (run_dir / "report.html").exists()):
            report_failure(run_dir, name, exc)
        raise
    return summaries


def report_failure(run_dir: Path, stage: str, exc: Exception) -> None:
    """A failed run still writes its report, headed by the failure, so that an older
    report.html is never taken for this run's; a report that cannot be written is only said."""
    error = (
        f"{exc.message}" + (f" (hint: {exc.hint})" if exc.hint else "")
        if isinstance(exc, MapdError)
        else f"{type(exc).__name__}: {exc}"
    )
    try:
        path = report.write_report(run_dir, failure=f"Stage {stage} failed: {error}")
    except Exception as failed:  # the run's own error is the one to show
        console.print(f"note: the report could not be written either: {failed}", markup=False)
        return
    console.print(f"report of the failed run: {path}", highlight=False, markup=False)


async def run_pipeline(
    cfg: RunConfig, start: str | None = None, until: str | None = None, retrain: bool = True
) -> dict[str, Any]:
    """Run the selected stages, round after round, under the run-folder lock.

    `start` forces a re-run from that stage on; later stages re-run when their inputs change.
    A trained student that the config no longer describes is trained again only with
    `retrain` (said before anything runs); without it the run stops before any work.
    """
    stages = select_stages(start, until)
    with run_lock(cfg.run_dir):
        if changes := check_student(cfg, stages, retrain):
            console.print(
                f"note: the student in {cfg.run_dir / 'student'} was trained otherwise "
                "than this config says; it is trained again when its stage comes:\n  "
                + "\n  ".join(changes),
                highlight=False,
                markup=False,
            )
        summaries = await run_round(cfg, stages, start)
        previous = cfg.run_dir
        for round_no in range(2, cfg.rounds + 1):
            if "train" not in stages:
                break
            round_cfg = next_round_config(cfg, previous, round_no)
            check_student(round_cfg, list(STAGES), retrain)
            console.print(
                f"[bold]round {round_no}[/]: the trained student takes the exam again, "
                f"in-process from {round_cfg.student.model}"
            )
            summaries[f"round-{round_no}"] = await run_round(round_cfg, list(STAGES), None)
            previous = round_cfg.run_dir
        return summaries

"""The run's own figures that both cards of `mapd push` carry, read once from the run folder.

Read with the report's collector, so the cards and `report.html` say the same numbers.
The config is shown as the run resolved it, with header values hidden: keys are named by
their variables (`api_key_env`) and never held in the config, but a header may carry one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mapd.stages.report.collect import (
    RunReport,
    collect_run,
    eval_metrics,
    funnel_steps,
    ledger_calls,
)

HIDDEN = "<hidden>"


@dataclass
class RunFacts:
    run_dir: Path
    name: str
    task: str
    task_hub_id: str | None
    teachers: list[tuple[str, str]]  # (name, model)
    funnel: list[tuple[str, int, str]]
    per_teacher: dict[str, dict[str, Any]]
    calls: tuple[int, int, float] | None  # (calls, tokens, usd) from the ledger
    config: dict[str, Any]
    evals: dict[str, dict[str, Any]]
    training: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)

    def markdown_sections(self) -> list[str]:
        return [
            *self.funnel_md(),
            *self.teachers_md(),
            *self.cost_md(),
            "## Configuration",
            "",
            "The run's resolved config (keys are named by their variables, never stored):",
            "",
            "```yaml",
            yaml.safe_dump(self.config, sort_keys=False).rstrip(),
            "```",
            "",
        ]

    def funnel_md(self) -> list[str]:
        lines = ["## Funnel", "", "| step | count | |", "|---|---:|---|"]
        lines += [f"| {label} | {count} | {note} |" for label, count, note in self.funnel]
        return [*lines, ""]

    def teachers_md(self) -> list[str]:
        lines = [
            "## Teachers and peer review",
            "",
            "| teacher | model | rationales | accepted | share |",
            "|---|---|---:|---:|---:|",
        ]
        for name, model in self.teachers:
            row = self.per_teacher.get(name) or {}
            made, kept = row.get("rationales", 0), row.get("accepted", 0)
            share = f"{kept / made:.0%}" if made else "–"
            lines.append(f"| {name} | `{model}` | {made} | {kept} | {share} |")
        return [*lines, ""]

    def cost_md(self) -> list[str]:
        if self.calls is None:
            text = "No call ledger on the machine that pushed: calls and cost are not known."
        else:
            calls, tokens, usd = self.calls
            text = f"{calls} calls, {tokens:,} tokens, ${usd:.2f} (from mapd's call ledger)."
        return ["## Cost", "", text, ""]


def hide_headers(value: Any) -> Any:
    """The config with every `headers:` value replaced: they are where a pasted token lives."""
    if isinstance(value, dict):
        return {
            k: (
                {h: HIDDEN for h in v}
                if k == "headers" and isinstance(v, dict)
                else hide_headers(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [hide_headers(v) for v in value]
    return value


def ledger_totals(run_dir: Path) -> tuple[int, int, float] | None:
    rows = ledger_calls(run_dir)
    if not rows:
        return None
    return len(rows), sum(r[4] or 0 for r in rows), sum(r[5] or 0.0 for r in rows)


def task_hub_id(task: dict[str, Any]) -> str | None:
    from mapd.tasks import TASKS

    if task.get("hub_id"):
        return str(task["hub_id"])
    known = TASKS.get(str(task.get("name")))
    return known.hub_id if known else None


def read_facts(run_dir: Path) -> RunFacts:
    """Everything the cards say about the run; MapdError if `run_dir` is not a run folder."""
    report: RunReport = collect_run(run_dir)
    cfg = report.config
    teachers = [t for t in cfg.get("teachers") or [] if isinstance(t, dict)]
    task = cfg.get("task") or {}
    return RunFacts(
        run_dir=run_dir,
        name=report.name,
        task=str(task.get("name", "?")),
        task_hub_id=task_hub_id(task),
        teachers=[(str(t.get("name")), str(t.get("model"))) for t in teachers],
        funnel=funnel_steps(report),
        per_teacher=(report.review or {}).get("per_teacher") or {},
        calls=ledger_totals(run_dir),
        config=hide_headers(cfg),
        evals=eval_metrics(run_dir),
        training=report.training,
        notes=list(report.left_out),
    )

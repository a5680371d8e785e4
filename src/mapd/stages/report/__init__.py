"""Stage `report`: `RUN_DIR/report.html` (one self-contained page) or a Markdown summary.

    path = write_report(Path("runs/demo"))      # runs/demo/report.html
    text = markdown_report(Path("runs/demo"))

Both show whatever the run folder holds; a run stopped early gives a shorter report. So the
stage has no inputs it requires and no fingerprint: it runs every time it is selected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mapd.config import RunConfig
from mapd.rundir import write_text_atomic
from mapd.stages.report.collect import RunReport, collect_run
from mapd.stages.report.html import render_html
from mapd.stages.report.markdown import render_markdown

__all__ = ["collect_run", "markdown_report", "save_report", "write_report"]

NAME = "report"
INPUTS: list[str] = []
OUTPUTS = ["report.html"]
ALWAYS_RUNS = True


def settings(cfg: RunConfig) -> dict[str, Any]:
    return {}


def run(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    return {"path": str(write_report(run_dir))}


def write_report(run_dir: Path, failure: str | None = None) -> Path:
    """Write `run_dir/report.html` and return its path; `failure` (the stage that stopped the
    run, and its error) heads the page, so an older report is never taken for this run's."""
    report = collect_run(Path(run_dir))
    report.failure = failure
    return save_report(report)


def save_report(report: RunReport) -> Path:
    """Write a collected report as `report.html` in its run folder and return the path."""
    path = report.run_dir / "report.html"
    write_text_atomic(path, render_html(report))
    return path


def markdown_report(run_dir: Path) -> str:
    """The report's summary (no item table) as Markdown."""
    return render_markdown(collect_run(Path(run_dir)))

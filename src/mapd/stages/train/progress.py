"""Training progress on stderr: step, loss per task and time left, instead of raw log dicts.

On a terminal a bar; when stderr is a file or a pipe (a job's log), a line at each tenth of
the steps. The raw log entries stay in `student/train_log.jsonl` (JsonlLogCallback).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback


def describe_losses(logs: dict[str, Any]) -> str:
    """`loss 0.5276 (feedback 0.61, rationale 0.45)` from a Trainer log entry, or ''."""
    if "loss" not in logs:
        return ""
    tasks = [
        f"{name} {logs[f'{name}_loss']:.4g}"
        for name in ("feedback", "rationale")
        if f"{name}_loss" in logs
    ]
    return f"loss {logs['loss']:.4g}" + (f" ({', '.join(tasks)})" if tasks else "")


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class TrainProgress(TrainerCallback):
    """Replaces transformers' progress callbacks (their tqdm bar and printed dicts)."""

    def __init__(self, enabled: bool | None = None, console: Console | None = None) -> None:
        self.bar_shown = sys.stderr.isatty() if enabled is None else enabled
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.progress: Progress | None = None
        self.losses = ""
        self.first_step = 0
        self.started = 0.0
        self.line_due: int | None = None  # a tenth reached at a step whose log comes next

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.first_step, self.started = state.global_step, time.monotonic()
        if self.bar_shown:
            self.progress = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps · {task.fields[losses]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task(
                "train", total=state.max_steps, completed=state.global_step, losses=""
            )
            self.progress.start()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.losses = describe_losses(logs)
        if self.progress is not None:
            self.progress.update(self.task, losses=self.losses)
        if self.line_due is not None:
            self.print_line(self.line_due, state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            return
        step, total = state.global_step, max(state.max_steps, 1)
        if step * 10 // total > (step - 1) * 10 // total:
            if control.should_log:  # the Trainer logs this step's losses right after
                self.line_due = step
            else:
                self.print_line(step, total)

    def print_line(self, step: int, total: int) -> None:
        self.line_due = None
        self.console.print(self.line(step, max(total, 1)), highlight=False, markup=False)

    def line(self, step: int, total: int) -> str:
        elapsed = time.monotonic() - self.started
        done_here = step - self.first_step
        left = elapsed / done_here * (total - step) if done_here else 0.0
        losses = f", {self.losses}" if self.losses else ""
        return (
            f"train: step {step}/{total} ({step / total:.0%}){losses}, "
            f"{duration(elapsed)}, about {duration(left)} left"
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, losses=self.losses)
            self.progress.stop()
            self.progress = None

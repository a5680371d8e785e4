"""Progress bar per batch of calls: done/total, rate, cache hits, failures, tokens and cost."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class BatchProgress:
    """Shown on stderr when it is a terminal (or when `enabled=True`); silent otherwise."""

    def __init__(
        self,
        description: str,
        total: int,
        enabled: bool | None = None,
        console: Console | None = None,
    ) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = self.cached = self.failed = self.tokens = 0
        self.cost = 0.0
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            disable=not self.enabled,
        )
        self.task = self.progress.add_task(description, total=total, rate="", stats="")

    def __enter__(self) -> BatchProgress:
        self.progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.stop()

    def advance(self, *, cached: bool, failed: bool, tokens: int, cost: float) -> None:
        self.cached += cached
        self.failed += failed
        self.tokens += tokens
        self.cost += cost
        self.done += 1
        if not self.enabled:  # counters only: rich's bookkeeping costs CPU per call
            return
        elapsed = self.progress.tasks[0].elapsed
        self.progress.update(
            self.task,
            advance=1,
            rate=f"{self.done / elapsed:.1f}/s" if elapsed else "",
            stats=f"cache {self.cached} · failed {self.failed} · {self.tokens:,} tok"
            f" · ${self.cost:.4f}",
        )

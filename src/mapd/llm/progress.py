"""Progress bar per batch of calls: done/total, rate, cache hits, failures, tokens and cost.

An in-process model reports the tokens it decodes (`generating`), so a batch whose replies
take minutes shows movement before the first reply arrives."""

from __future__ import annotations

import sys
import time
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

HEARTBEAT = 600.0  # seconds: a batch that waits unchanged still gets a log line this often
LOG_EVERY = 30.0  # seconds between plain lines while an in-process model is still decoding


def _display(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )


class _Shared:
    """The one live display on stderr; batches running at the same time (one per teacher)
    each add a line to it instead of fighting over the terminal with displays of their own."""

    display: Progress | None = None
    users = 0


class BatchProgress:
    """Shown on stderr when it is a terminal (or when `enabled=True`). When stderr is a file
    or a pipe (a job's log), a plain line at each tenth of the batch instead; `enabled=False`
    is silent.

    With the default console, batches that run at the same time share one display.
    """

    def __init__(
        self,
        description: str,
        total: int,
        enabled: bool | None = None,
        console: Console | None = None,
    ) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.log_lines = enabled is None and not self.enabled
        self.description, self.total, self.started = description, total, time.monotonic()
        self.done = self.cached = self.failed = self.timeouts = self.tokens = self.generated = 0
        self.stalls = 0  # connections given up as stalled and retried (an overloaded server)
        self.status = ""  # a submitted batch's status, for `show`
        self.last_line = -HEARTBEAT  # when `show` last printed a log line
        self.last_decoding_line = self.started  # when `generating` last printed one
        self.cost = 0.0
        self.shared = console is None and self.enabled
        if self.shared and _Shared.display is not None:
            self.progress = _Shared.display
        else:
            self.progress = _display(console or Console(stderr=True), self.enabled)
            if self.shared:
                _Shared.display = self.progress
        self.task = self.progress.add_task(description, total=total, rate="", stats="")

    def __enter__(self) -> BatchProgress:
        if not self.shared:
            self.progress.start()
            return self
        if _Shared.users == 0:
            self.progress.start()
        _Shared.users += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.shared:
            self.progress.stop()
            return
        _Shared.users -= 1
        if _Shared.users == 0:
            self.progress.stop()
            _Shared.display = None

    def advance(
        self,
        *,
        cached: bool,
        failed: bool,
        tokens: int,
        cost: float,
        timeouts: int = 0,
        stalls: int = 0,
    ) -> None:
        self.cached += cached
        self.failed += failed
        self.timeouts += timeouts
        self.stalls += stalls
        self.tokens += tokens
        self.cost += cost
        self.done += 1
        if self.log_lines and self.done * 10 // self.total > (self.done - 1) * 10 // self.total:
            self.log_line()
        if not self.enabled:  # counters only: rich's bookkeeping costs CPU per call
            return
        elapsed = next(t.elapsed for t in self.progress.tasks if t.id == self.task)
        self.progress.update(
            self.task,
            advance=1,
            rate=f"{self.done / elapsed:.1f}/s" if elapsed else "",
            stats=self.stats(),
        )

    def stats(self) -> str:
        text = f"cache {self.cached} · failed {self.failed}{self._timeouts(' ·')}"
        text += f" · {self.tokens:,} tok"
        if self.generated:
            text += f" ({self.generated:,} generated)"
        return text + f" · ${self.cost:.4f}"

    def generating(self, tokens: int) -> None:
        """`tokens` more were decoded (called by an in-process backend from its thread)."""
        self.generated += tokens
        now = time.monotonic()
        if self.log_lines and now - self.last_decoding_line >= LOG_EVERY:
            self.last_decoding_line = now
            self.log_line()
        if self.enabled:
            self.progress.update(self.task, stats=self.stats())

    def show(self, done: int, status: str, note: str) -> None:
        """Set the count to `done` with a note, for a batch the provider runs: its status,
        counts and the time since submission. A log line when the status changes, the
        count passes a tenth, or HEARTBEAT seconds went by: a provider may show no progress
        for hours of a 24-hour wait, which must not look like a hung job in its log."""
        tenth = done * 10 // max(self.total, 1) > self.done * 10 // max(self.total, 1)
        now = time.monotonic()
        if self.log_lines and (status != self.status or tenth or now - self.last_line >= HEARTBEAT):
            print(f"{self.description}: {note}", file=sys.stderr, flush=True)
            self.last_line = now
        self.done, self.status = done, status
        if self.enabled:
            self.progress.update(self.task, completed=done, stats=note)

    def _timeouts(self, separator: str) -> str:
        """Attempts that timed out (retried or not) and stalled connections, when any."""
        text = f"{separator} timed out {self.timeouts}" if self.timeouts else ""
        return text + (f"{separator} stalled {self.stalls}" if self.stalls else "")

    def log_line(self) -> None:
        elapsed = time.monotonic() - self.started
        self.last_decoding_line = time.monotonic()
        print(
            f"{self.description}: {self.done}/{self.total} ({self.done / self.total:.0%}), "
            f"{self.done / elapsed if elapsed else 0:.1f}/s, cache {self.cached}, "
            f"failed {self.failed}{self._timeouts(',')}, {self.tokens:,} tok, "
            + (f"{self.generated:,} generated, " if self.generated else "")
            + f"${self.cost:.4f}, {elapsed:.0f} s",
            file=sys.stderr,
            flush=True,
        )

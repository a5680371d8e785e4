"""The batch progress bar counts cache hits, failures, tokens and cost, and renders them."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from mapd.llm.progress import BatchProgress


def test_progress_counts_and_renders():
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    bar = BatchProgress("feedback gpt", total=3, enabled=True, console=console)
    with bar:
        bar.advance(cached=True, failed=False, tokens=100, cost=0.0)
        bar.advance(cached=False, failed=False, tokens=1200, cost=0.0125)
        bar.advance(cached=False, failed=True, tokens=0, cost=0.0)
    task = bar.progress.tasks[0]
    assert task.completed == 3 and task.finished
    assert task.fields["stats"] == "cache 1 · failed 1 · 1,300 tok · $0.0125"
    rendered = console.file.getvalue()
    assert "feedback gpt" in rendered and "3/3" in rendered and "1,300 tok" in rendered


def test_progress_shows_timed_out_attempts_only_when_there_are_some():
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    bar = BatchProgress("teach: t", total=2, enabled=True, console=console)
    with bar:
        bar.advance(cached=False, failed=False, tokens=10, cost=0.0)
        assert "timed out" not in bar.progress.tasks[0].fields["stats"]
        bar.advance(cached=False, failed=False, tokens=10, cost=0.0, timeouts=2)
    assert (
        bar.progress.tasks[0].fields["stats"]
        == "cache 0 · failed 0 · timed out 2 · 20 tok · $0.0000"
    )


def test_progress_shows_stalled_connections_the_backend_gave_up(capsys):
    bar = BatchProgress("teach: t", total=1, enabled=False)
    bar.log_lines = True  # stderr is a log file here
    bar.advance(cached=False, failed=False, tokens=10, cost=0.0, stalls=3)
    assert "stalled 3" in bar.stats()
    assert "stalled 3" in capsys.readouterr().err


def test_progress_is_silent_when_disabled(capsys):
    with BatchProgress("x", total=1, enabled=False) as bar:
        bar.advance(cached=False, failed=False, tokens=1, cost=0.0)
    assert capsys.readouterr().err == ""


def test_a_log_gets_a_plain_line_at_each_tenth(capsys):
    with BatchProgress("eval trained", total=25) as bar:  # pytest's stderr is no terminal
        for i in range(25):
            bar.advance(cached=i < 5, failed=False, tokens=10, cost=0.0)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("eval trained: 3/25 (12%), ")
    assert lines[-1].startswith("eval trained: 25/25 (100%), ")
    assert "cache 5, failed 0, 250 tok" in lines[-1]


def test_a_batch_that_waits_unchanged_still_gets_a_log_line_now_and_then(monkeypatch, capsys):
    from mapd.llm import progress

    clock = [1000.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    with BatchProgress("teach: gpt batch_1", total=100) as bar:  # stderr is no terminal
        for minutes in range(0, 31):  # polled every minute, no change for half an hour
            clock[0] = 1000.0 + 60 * minutes
            bar.show(0, "in_progress", f"in_progress 0/100 · {minutes} min since submission")
    lines = capsys.readouterr().err.splitlines()
    assert [line.rsplit("· ", 1)[1] for line in lines] == [
        f"{m} min since submission" for m in (0, 10, 20, 30)
    ]


def test_batches_running_together_share_one_display(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    first = BatchProgress("teach: alice", total=2, enabled=True)
    with first:
        second = BatchProgress("teach: bob", total=2, enabled=True)
        with second:
            assert second.progress is first.progress
            assert [t.description for t in first.progress.tasks] == ["teach: alice", "teach: bob"]
            second.advance(cached=False, failed=False, tokens=5, cost=0.0)
        assert first.progress.live.is_started  # still shown while alice runs
    assert not first.progress.live.is_started
    with BatchProgress("review: alice", total=1, enabled=True) as third:
        assert third.progress is not first.progress  # a new stage starts a new display


def test_decoded_tokens_show_before_the_first_reply(capsys, monkeypatch):
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    bar = BatchProgress("exam", total=2, enabled=True, console=console)
    with bar:
        bar.generating(8)
        bar.generating(8)
        stats = bar.progress.tasks[0].fields["stats"]
        assert stats == "cache 0 · failed 0 · 0 tok (16 generated) · $0.0000"
    monkeypatch.setattr("mapd.llm.progress.LOG_EVERY", 0.0)
    with BatchProgress("exam", total=2) as logged:  # pytest's stderr is no terminal
        logged.generating(8)
    line = capsys.readouterr().err
    assert line.startswith("exam: 0/2 (0%), ") and "0 tok, 8 generated, " in line

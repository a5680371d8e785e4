"""The CLI boundary: user errors and OS errors become one or two lines and exit code 2."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest

from mapd import cli
from mapd.errors import MapdError

DEMO = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")


def run_main(monkeypatch, argv: list[str]) -> int:
    monkeypatch.setattr(sys, "argv", ["mapd", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return int(exit_.value.code or 0)


@pytest.mark.parametrize(
    "error, needle",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "runs/x/dataset/hf/data.arrow"),
            "disk full",
        ),
        (OSError(errno.EACCES, "Permission denied", "runs/x/report.html"), "cannot write"),
        (MapdError("model said [bold]hi[/bold]", "a hint"), "[bold]hi[/bold]"),
    ],
)
def test_errors_become_one_clear_message(monkeypatch, capsys, error, needle):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "_run_stages", fail)
    assert run_main(monkeypatch, ["run", DEMO]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert "hint:" in err


def test_other_os_errors_are_not_hidden(monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(cli, "_run_stages", fail)
    monkeypatch.setattr(sys, "argv", ["mapd", "run", DEMO])
    with pytest.raises(OSError):
        cli.main()


def test_ctrl_c_exits_130_and_says_how_to_resume(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run_stages", interrupted)
    assert run_main(monkeypatch, ["run", DEMO]) == 130
    assert "interrupted; run the same command again to resume" in capsys.readouterr().err

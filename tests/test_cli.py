"""The CLI boundary: user errors and OS errors become one or two lines and exit code 2."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mapd import cli
from mapd.errors import MapdError
from mapd.settings_doc import all_settings

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
        # a path given on the command line (or inside one) that is missing: the user's mistake
        (FileNotFoundError(errno.ENOENT, "No such file or directory", DEMO), "demo.yaml"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", f"{DEMO}/x"), "Not a directory"),
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


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EIO, "I/O error"),
        # a file of mapd's own making that is missing is a bug: its traceback is kept
        FileNotFoundError(
            errno.ENOENT, "No such file or directory", "runs/x/student/manifest.json"
        ),
    ],
)
def test_other_os_errors_are_not_hidden(monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "_run_stages", fail)
    monkeypatch.setattr(sys, "argv", ["mapd", "run", DEMO])
    with pytest.raises(OSError):
        cli.main()


MAPD_SCRIPT = Path(sys.executable).with_name("mapd")  # the console script pip installed


@pytest.mark.parametrize(
    "argv, needle",
    [
        ([], "no command given"),
        (["rn"], "No such command 'rn'"),
        (["report"], "Missing argument"),
        (["run", "--limit", "4"], "task.limit=4"),
        (["cache"], "no command given"),
    ],
)
def test_usage_errors_of_the_installed_script_are_one_line(argv, needle):
    """Through the real entry point, so typer's own (bundled) click exceptions are met."""
    result = subprocess.run([str(MAPD_SCRIPT), *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and "hint:" in lines[1], lines
    assert needle in result.stderr


def test_ctrl_c_exits_130_and_says_how_to_resume(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run_stages", interrupted)
    assert run_main(monkeypatch, ["run", DEMO]) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted; `mapd ") and "resumes from here" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        # a demo teacher pointed at an API keeps the demo's in-process backend: not ignored
        (
            ["validate", DEMO, "teachers.0.base_url=https://api.openai.com/v1"],
            "set `backend: openai`",
        ),
        # a key pasted where its variable's name goes is never printed back
        (["validate", DEMO, "teachers.0.api_key_env=sk-abc123"], "not the key itself"),
        (["validate", DEMO, "review.threshold=11"], "threshold 11 must lie in [scale_min"),
        # `mapd ablate`'s rows and variants are checked by `mapd validate` too
        (["validate", DEMO, "ablation.variants={a: [dataset.pik=all]}"], "did you mean `pick`"),
        (["validate", DEMO, "ablation.variants={a: [task.name=svamp]}"], "cannot change between"),
        (["validate", DEMO, "ablation.rows=[nosuch]"], "unknown ablation row 'nosuch'"),
        (["ledger", DEMO], "is a file; give a run folder"),
        # the task section as far as it can be known before a question is read
        (["validate", DEMO, "task.name=strategyqa", "task.source=reasoning_gym"], "cannot use"),
        (["validate", DEMO, "task.source=local", "task.path=no/such.jsonl"], "no such file"),
        (
            ["score", "--task", "jsonl", "--input", "x.jsonl", "--answer-type", "bogus"],
            "use number",
        ),
        (
            ["score", "--task", "gsm8k", "--input", "x.jsonl", "--source", "nosuch"],
            "'hub', 'local'",
        ),
        (
            ["validate", DEMO, "teachers.0.batch=maybe"],
            "valid boolean, unable to interpret input; or",
        ),
        (["report", "no/such/run"], "does not exist; give a run folder"),
    ],
)
def test_first_mistakes_get_one_line_and_exit_2(argv, needle, tmp_path):
    env = {**os.environ, "MAPD_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [str(MAPD_SCRIPT), *argv], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and needle in result.stderr, result.stderr
    assert "sk-abc123" not in result.stderr


def test_an_unusable_mapd_home_is_one_line(tmp_path):
    home = tmp_path / "a-file"
    home.write_text("")
    env = {**os.environ, "MAPD_HOME": str(home)}
    result = subprocess.run(
        [str(MAPD_SCRIPT), "cache", "stats"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot use" in result.stderr and "set MAPD_HOME" in result.stderr


def test_h_is_help():
    result = subprocess.run([str(MAPD_SCRIPT), "validate", "-h"], capture_output=True, text=True)
    assert result.returncode == 0 and "Check a run config" in result.stdout


FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize(
    "rows, settings, needle, hint",
    [
        # a file of another kind: its first line, and the question whether it is the dataset
        (
            "not a dataset\nat all\n",
            [],
            "line 1: invalid JSON (Expecting value at column 1)",
            "is data.jsonl a gsm8k dataset?",
        ),
        # a bad row among good ones: its line and the field that is missing
        (
            (FIXTURES / "gsm8k_bad" / "train.jsonl").read_text(),
            [],
            'line 2: missing field "answer" (the row has question)',
            "set task.on_bad_row=skip",
        ),
        # the jsonl task's field names that are not the file's
        (
            '{"problem": "2+2?", "solution": 4}\n',
            ["task.name=jsonl", "task.answer_type=number"],
            'line 1: missing field "question" (the row has problem, solution)',
            "name the row's fields with task.question_field and task.answer_field",
        ),
    ],
    ids=["not-a-dataset", "a-bad-row", "other-field-names"],
)
def test_validate_reads_the_first_rows_of_a_local_dataset(tmp_path, rows, settings, needle, hint):
    data = tmp_path / "data.jsonl"
    data.write_text(rows)
    argv = ["validate", DEMO, "task.source=local", f"task.path={data}", *settings]
    result = subprocess.run([str(MAPD_SCRIPT), *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "valid." not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0] == f"error: {data} {needle}", lines
    assert hint in lines[1]


def test_validate_passes_a_dataset_whose_bad_rows_are_skipped():
    data = FIXTURES / "gsm8k_bad" / "train.jsonl"
    argv = ["validate", DEMO, "task.source=local", f"task.path={data}", "task.on_bad_row=skip"]
    result = subprocess.run([str(MAPD_SCRIPT), *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "valid." in result.stdout, result.stderr


def settings_shown(columns: int, terminal: bool) -> str:
    """`mapd settings` as shown `columns` wide, in a terminal (told so, no colours) or a pipe."""
    env = {**os.environ, "COLUMNS": str(columns)}
    if terminal:
        env |= {"TTY_COMPATIBLE": "1", "TERM": "xterm", "NO_COLOR": "1"}
    result = subprocess.run(
        [str(MAPD_SCRIPT), "settings"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # the header's bold


def test_settings_in_a_pipe_are_whole_one_line_each():
    shown = settings_shown(80, terminal=False)
    assert "…" not in shown
    rows = [line.split("\t") for line in shown.splitlines()]
    assert rows == [[s.path, s.kind, s.default, s.help] for s in all_settings()]


@pytest.mark.parametrize("columns", [80, 50])
def test_settings_in_a_narrow_terminal_wrap_every_cell_and_cut_none(columns):
    shown = settings_shown(columns, terminal=True)
    assert "…" not in shown and max(map(len, shown.splitlines())) <= columns
    cells = [line.split("│")[1:-1] for line in shown.splitlines() if line.startswith("│")]
    # each column, its lines joined and the wrapping taken out, holds every text whole
    for index, field in enumerate(("path", "kind", "default", "help")):
        column = "".join(row[index] for row in cells)
        whole = "".join(getattr(s, field) for s in all_settings())
        assert "".join(column.split()) == "".join(whole.split()), field


def test_train_without_a_dataset_names_mapd_build_and_makes_no_folder(tmp_path):
    """It hinted `mapd run ...`; the command that builds the training set is `mapd build`."""
    out = tmp_path / "run"
    env = {**os.environ, "MAPD_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [str(MAPD_SCRIPT), "train", DEMO, f"output_dir={out}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "train.jsonl not found" in result.stderr and "mapd build" in result.stderr
    assert not out.exists()


def test_a_bad_train_args_value_stops_mapd_run_before_the_exam(tmp_path):
    """TrainingArguments checks train.args before any call is made, not after the teachers
    are paid."""
    out = tmp_path / "run"
    env = {**os.environ, "MAPD_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [str(MAPD_SCRIPT), "run", DEMO, f"output_dir={out}", "train.args.optim=nosuch"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "train.args" in result.stderr
    assert not (out / "attempts.jsonl").exists()

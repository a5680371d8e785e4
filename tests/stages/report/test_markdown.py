"""`mapd report RUN_DIR` and `mapd report RUN_DIR --format md` from the command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def mapd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mapd", *args], capture_output=True, text=True)


def test_markdown_summary(scripted_run: Path):
    result = mapd("report", str(scripted_run), "--format", "md")
    assert result.returncode == 0, result.stderr
    md = result.stdout
    assert md.startswith("# mapd report: scripted")
    assert "| exam |" in md and "| teach |" in md  # stage table with the ledger's calls
    assert "| mistakes | 7 | 100% answered wrong |" in md
    assert re.search(r"\| exam \| [\d.]+ s \| 7 \| 0 \|", md)  # 7 calls, none cached
    assert "| alice | 7/7 | 100% |" in md and "| carol | 0/7 | 0% |" in md
    # bob's reviews never hold a score: a row of invalid counts only
    assert "| bob | 0 | 0 | 0 | 0 | 0 | 14 |" in md
    assert not (scripted_run / "report.html").exists()  # md prints, writes nothing


def test_html_command_writes_the_page(release_run: Path):
    result = mapd("report", str(release_run))
    assert result.returncode == 0, result.stderr
    assert (release_run / "report.html").stat().st_size > 10_000


def test_bad_format_and_folder_are_clear_errors(release_run: Path, tmp_path: Path):
    result = mapd("report", str(release_run), "--format", "pdf")
    assert result.returncode == 2 and "--format html or --format md" in result.stderr
    result = mapd("report", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "does not exist; give a run folder" in result.stderr
    assert "Traceback" not in result.stderr

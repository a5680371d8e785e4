"""Run-folder files: written atomically, yet with the mode the umask gives (not the 0600 of
the temporary files), so a colleague can read a shared run folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tests.stages.scripted_classroom import reply, write_config

from mapd.testing.loopback import LoopbackServer

MAPD_SCRIPT = Path(sys.executable).with_name("mapd")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_run_folder_files_get_the_umask_mode(tmp_path, umask, mode):
    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url)
        run_dir = tmp_path / "run"
        for command in (["run", config, "--until", "build"], ["report", run_dir]):
            done = subprocess.run(
                [str(MAPD_SCRIPT), *map(str, command)],
                capture_output=True,
                text=True,
                umask=umask,
                env={**os.environ},
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
    written = [
        "config.yaml",
        "attempts.jsonl",
        "reviews.jsonl",
        "dataset/train.jsonl",
        "report.html",
    ]
    modes = {name: stat.S_IMODE((run_dir / name).stat().st_mode) for name in written}
    assert modes == dict.fromkeys(written, mode)
    assert stat.S_IMODE((run_dir / "manifests" / "build.json").stat().st_mode) == mode


def test_writing_never_sets_the_umask(tmp_path):
    """Reading the umask sets it for a moment, process-wide: it is read once at import, never
    while other threads may be creating files (the first write used to read it)."""
    code = f"""
import os
from pathlib import Path
import mapd.rundir as rundir
calls = []
real = os.umask
os.umask = lambda mask: calls.append(mask) or real(mask)
rundir.write_text_atomic(Path({str(tmp_path / "a.txt")!r}), "x")
rundir.write_json(Path({str(tmp_path / "b.json")!r}), {{}})
print(calls)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

"""Run the `mapd` command line and SIGKILL it at its N-th atomic file write.

    python tests/reliability/killpoint.py N MODE run CONFIG --until build

Every run-folder file is written to a temporary file, fsynced, then renamed into place, so
the N-th `os.fsync` is the N-th file write. MODE `rename` kills after the temporary file is
complete and before the rename; `torn` first cuts the temporary file in half, as a kill in
the middle of writing it would. The exit status is -9 when the kill point was reached.
"""

from __future__ import annotations

import os
import signal
import sys

target, mode = int(sys.argv[1]), sys.argv[2]
writes = 0
real_fsync = os.fsync


def fsync_then_maybe_die(fd: int) -> None:
    global writes
    writes += 1
    if writes == target:
        if mode == "torn":
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
        real_fsync(fd)
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)


os.fsync = fsync_then_maybe_die
sys.argv = ["mapd", *sys.argv[3:]]

from mapd.cli import main  # noqa: E402 -- after the patch

main()

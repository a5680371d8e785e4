"""Write the SVAMP problems that are not among the paper release's mistakes, in SVAMP's own format.

    python bench/svamp_heldout.py PATH/svamp/SVAMP.json PATH/paper-release/*_svamp_false_round0.json \
        --out bench/results/svamp-heldout

The release's 387 SVAMP mistakes are the student's training data; the other 613 problems
of SVAMP.json are held out for evaluating the trained student (task.source=local,
task.path=bench/results/svamp-heldout, task.files.test=SVAMP.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("svamp", type=Path)
    parser.add_argument("release_mistakes", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench/results/svamp-heldout"))
    args = parser.parse_args()
    held_out, total = write_held_out(args.svamp, args.release_mistakes, args.out)
    print(f"{held_out} of {total} problems held out -> {args.out / 'SVAMP.json'}")


def write_held_out(svamp: Path, release_mistakes: Path, out: Path) -> tuple[int, int]:
    """Write out/SVAMP.json; return how many problems it holds, and how many SVAMP has."""
    problems = json.loads(svamp.read_text(encoding="utf-8"))
    taken = {
        m["question"].strip() for m in json.loads(release_mistakes.read_text(encoding="utf-8"))
    }
    held_out = [p for p in problems if f"{p['Body'].strip()} {p['Question'].strip()}" not in taken]
    out.mkdir(parents=True, exist_ok=True)
    (out / "SVAMP.json").write_text(json.dumps(held_out, indent=1), encoding="utf-8")
    return len(held_out), len(problems)


if __name__ == "__main__":
    main()

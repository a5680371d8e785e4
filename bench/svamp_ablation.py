"""The paper's comparison on its released SVAMP data: SmolLM2-135M-Instruct, one row per recipe variant.

    python bench/svamp_ablation.py PATH/svamp/SVAMP.json PATH/paper-release
    python bench/svamp_ablation.py ... --seeds 731,1 --rows mapd,single-gpt-3.5-turbo
    python bench/svamp_ablation.py ... --set eval.limit=2 --set train.max_steps=1 --runs /tmp/smoke

Imports the release's 387 SVAMP mistakes with every teacher's feedback, rationale and review
scores (`mapd import-release`), then `mapd ablate` trains one student per row and seed on
those same imported files, with the paper preset and the CPU-sized recipe of
bench/svamp_quality.py (LoRA r=16, lr 2e-4 cosine, 2 epochs, effective batch 8), and
evaluates each greedy with 200 new tokens on the 613 SVAMP problems that are not among the
mistakes. Rows: untrained; each single teacher without review; the committee without review;
MAPD; MAPD with alpha = 0; MAPD with the answer check; then the candidate recipes of
CANDIDATES below (issue 21, item 2: a recipe that beats the paper's), each MAPD with a few
settings changed. Each row: accuracy with a 95 % Wilson
interval and McNemar's exact test against MAPD on the same problems; with several seeds, each
seed and the pooled figure. On 2 cores about 50 min of training and 15 min of evaluation per
row and seed; a killed run resumes where it stopped, and a later run with other --rows or
--seeds adds to the same table. Prints the table and writes bench/results/svamp_ablation.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from svamp_heldout import write_held_out
from svamp_quality import RECIPE

from mapd.config import dump_run_config, load_config, preset_path

# recipes compared with the paper's (the MAPD row), as `ablation.variants`; always in the
# config, so that a later run with other --rows keeps them in the table
CANDIDATES = {
    # every accepted rationale whose answer is right, each its own example, one epoch: about
    # the MAPD row's number of training steps, on cleaner and more varied targets
    "mapd-checked-all-1ep": [
        "review.require_correct_answer=true",
        "dataset.pick=all",
        "train.epochs=1",
    ],
    # every accepted rationale and every feedback (about 2.6x the examples)
    "mapd-pick-all": ["dataset.pick=all"],
    "mapd-4ep": ["train.epochs=4"],
}


def mapd(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mapd", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("svamp", type=Path, help="SVAMP.json (all 1,000 problems)")
    parser.add_argument("release", type=Path, help="the paper release's data folder")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--seeds", default="731", help="train each row once per seed: 731,1")
    parser.add_argument(
        "--rows", default=None, help="only these rows, e.g. untrained,mapd (default: all)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another config override, e.g. eval.limit=200",
    )
    args = parser.parse_args()
    mistakes = sorted(args.release.glob("Llama-2-7b-chat-hf_svamp_*_round0.json"))
    if not mistakes:
        sys.exit(f"no Llama-2-7b-chat-hf_svamp_*_round0.json in {args.release}")
    false_file = next(m for m in mistakes if "_false_" in m.name)
    held_out_dir = (args.runs / "svamp-heldout").resolve()
    held_out, total = write_held_out(args.svamp, false_file, held_out_dir)
    print(f"{held_out} of {total} SVAMP problems held out for evaluation")

    run_dir = args.runs / "svamp-ablation"
    config = run_dir / "config.yaml"
    if not config.exists():
        mapd("import-release", "--task", "svamp", "--output", str(run_dir), *map(str, mistakes))
    # written again on every run from the preset and this command's settings, so that the
    # folder's config is what the command says; finished rows with the same settings are kept
    test_set = ["task.source=local", f"task.path={held_out_dir}", "task.files.test=SVAMP.json"]
    candidates = f"ablation.variants={json.dumps(CANDIDATES)}"
    cfg = load_config(preset_path("paper/svamp"), [*RECIPE, *test_set, candidates, *args.set])
    config.write_text(dump_run_config(cfg), encoding="utf-8")
    mapd(
        "ablate", str(config), "--seeds", args.seeds, *(["--rows", args.rows] if args.rows else [])
    )

    with (run_dir / "ablation" / "ablation.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = Path(__file__).parent / "results" / "svamp_ablation.json"
    out.parent.mkdir(exist_ok=True)  # git-ignored, so absent from a fresh clone
    out.write_text(json.dumps({"run_dir": str(run_dir), "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

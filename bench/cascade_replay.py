"""The cascade committee replayed on the paper's released SVAMP data: its cost and its training set.

    python bench/cascade_replay.py PATH/paper-release [--runs runs/cascade-replay]

Imports the release's 387 SVAMP mistakes (every teacher's feedback, rationale and two review
scores) with `mapd import-release`, then builds the training set of each recipe from those
same records, calling nobody: MAPD with the answer check (the full committee: 12 calls a
mistake) and the cascade (`committee.mode: cascade`) in three teacher orders: the default
(cheapest first by the paper preset's prices: Mixtral, GPT-3.5, Gemini), GPT-3.5 first, and
GPT-3.5 last. Each recipe's calls are those its review stage counts (review.json), its tokens
are estimated from characters (src/mapd/stages/review/cost.py; the release records no
usage), its dollars follow the preset's prices. Prints one Markdown table and writes
bench/results/cascade_replay.json. Takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASCADE = [
    "committee.mode=cascade",
    "review.require_correct_answer=true",
    "dataset.feedback_from=accepted",
]
RECIPES = {
    "MAPD with the answer check (full committee)": ["review.require_correct_answer=true"],
    "cascade, cheapest first (Mixtral, GPT-3.5, Gemini)": CASCADE,
    "cascade, GPT-3.5 first (GPT-3.5, Gemini, Mixtral)": [
        *CASCADE,
        "committee.order=[gpt-3.5-turbo,gemini-1.0-pro,mixtral-8x7b]",
    ],
    "cascade, GPT-3.5 last (Mixtral, Gemini, GPT-3.5)": [
        *CASCADE,
        "committee.order=[mixtral-8x7b,gemini-1.0-pro,gpt-3.5-turbo]",
    ],
}


def mapd(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mapd", *args], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("release", type=Path, help="the paper release's data folder")
    parser.add_argument("--runs", type=Path, default=Path("runs/cascade-replay"))
    args = parser.parse_args()
    files = sorted(args.release.glob("Llama-2-7b-chat-hf_svamp_*_round0.json"))
    if not files:
        sys.exit(f"no Llama-2-7b-chat-hf_svamp_*_round0.json in {args.release}")
    rows = []
    for i, (recipe, overrides) in enumerate(RECIPES.items()):
        run_dir = args.runs / f"recipe-{i}"
        if not (run_dir / "release.json").exists():
            mapd("import-release", "--task", "svamp", "--output", str(run_dir), *map(str, files))
        mapd("run", str(run_dir / "config.yaml"), "--until", "build", *overrides)
        review = json.loads((run_dir / "review.json").read_text())
        stats = json.loads((run_dir / "dataset" / "stats.json").read_text())
        cascade = review.get("cascade")
        if cascade:
            cost = cascade["cost"]
        else:
            sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
            from mapd.config import load_config
            from mapd.stages.review.cost import recipe_cost

            cfg = load_config(run_dir / "config.yaml")
            cost = recipe_cost(cfg, run_dir)
        rows.append(
            {
                "recipe": recipe,
                "calls": cost["calls"],
                "tokens": cost["tokens"],
                "usd": cost["usd"],
                "calls_by_kind": cost["calls_by_kind"],
                "mistakes_covered": stats["mistakes_used"],
                "examples_per_teacher": stats["rationale_examples_per_teacher"],
                "steps": cascade["steps"] if cascade else None,
            }
        )
    full = rows[0]
    print(
        "| recipe | calls (feedback + rationale + review) | tokens (estimated) | $ at the "
        "preset's prices | mistakes covered | rationales kept per teacher |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        kinds = r["calls_by_kind"]
        split = f"{kinds['feedback']} + {kinds['rationale']} + {kinds['review']}"
        ratio = "" if r is full else f" ({r['calls'] / full['calls']:.2f}x)"
        tokens = "" if r is full else f" ({r['tokens'] / full['tokens']:.2f}x)"
        per = ", ".join(f"{k} {v}" for k, v in sorted(r["examples_per_teacher"].items()))
        print(
            f"| {r['recipe']} | {r['calls']:,}{ratio}: {split} | {r['tokens']:,}{tokens} "
            f"| {r['usd']:.3f} | {r['mistakes_covered']} | {per} |"
        )
    out = Path(__file__).parent / "results" / "cascade_replay.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

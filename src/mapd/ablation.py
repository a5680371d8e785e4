"""`mapd ablate`: the paper's comparison table from one config, with intervals and paired tests.

Rows: the untrained student; each single teacher without review; the committee without
review; the committee with review (MAPD, the paper's acceptance rule and feedback choice);
MAPD with α = 0 (no learning from mistakes); MAPD with the answer check; the cascade
committee (`committee.mode: cascade`, with the answer check); then the config's
own `ablation.variants`, each MAPD with a few KEY=VALUE settings (a recipe to compare with
the paper's, e.g. `mapd-pick-all: [dataset.pick=all]`). Each trained row
is a run folder per seed, `<output_dir>/ablation/<row>/seed-<seed>/`, with `train.seed` set
to that seed (the pick of examples and the training); the untrained student is evaluated
once, in `ablation/untrained/`. The exam, the teaching and the reviews are the same requests
in every row and seed, so after the first they come from the cache for free. A config made
by `mapd import-release` gives every row the imported mistakes, feedback, rationales and
reviews instead. A row whose stages are finished and unchanged is skipped, so a killed
ablation resumes.

Writes `ablation/ablation.md` and `ablation.csv`: every finished row and seed (also those of
earlier runs with other `--rows`), its accuracy with a 95 % Wilson interval, McNemar's exact
test against MAPD on the same questions (pooled over seed × question pairs), and one
sentence per comparison saying what the data supports.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from mapd.config import (
    RunConfig,
    apply_override,
    dump_run_config,
    parse_overrides,
    validate_config,
)
from mapd.errors import MapdError
from mapd.release import share_imported
from mapd.rundir import (
    fingerprint,
    read_json,
    run_lock,
    stage_is_done,
    write_manifest,
    write_text_atomic,
)
from mapd.stats import paired_counts, wilson_interval

console = Console(stderr=True, soft_wrap=True)
UNTRAINED = "untrained"
TRAINED_STAGES = ["exam", "teach", "review", "build", "train", "eval"]
SIGNIFICANCE = 0.05


Changes = list[tuple[list[str], Any]]  # dotted key path, value: as a command-line override


def variants(cfg: RunConfig) -> list[tuple[str, str, Changes]]:
    """(row name, description, settings changed from the MAPD row) of the trained rows: the
    paper's rows, then the config's own `ablation.variants` (recipes to compare with MAPD)."""
    rows: list[tuple[str, str, Changes]] = [
        ("mapd", "committee with peer review (MAPD)", []),
        (
            "mapd-alpha0",
            "MAPD with alpha = 0 (no learning from mistakes)",
            [(["train", "alpha"], 0.0)],
        ),
        (
            "mapd-answer-check",
            "MAPD with the answer check",
            [(["review", "require_correct_answer"], True)],
        ),
        (
            "committee-no-review",
            "committee without review",
            [(["dataset", "mode"], "committee_no_review")],
        ),
        (
            "cascade",
            "cascade committee with the answer check (next teacher only for open mistakes)",
            [
                (["committee", "mode"], "cascade"),
                (["review", "require_correct_answer"], True),
                (["dataset", "feedback_from"], "accepted"),
            ],
        ),
    ]
    rows += [
        (
            f"single-{t.name}",
            f"single teacher {t.name} without review",
            [(["dataset", "mode"], "single_teacher"), (["dataset", "teacher"], t.name)],
        )
        for t in cfg.teachers
    ]
    taken = {name for name, _, _ in rows} | {UNTRAINED}
    for name, settings in (cfg.ablation.variants or {}).items():
        if name in taken:
            raise MapdError(
                f"ablation.variants: {name!r} is already a row of the table",
                "give the variant another name, e.g. mapd-pick-all",
            )
        rows.append((name, f"MAPD with {', '.join(settings)}", parse_overrides(settings)))
    return rows


def selected_rows(cfg: RunConfig) -> list[str]:
    """The rows to run: `ablation.rows`, checked, or every row."""
    names = [UNTRAINED, *(name for name, _, _ in variants(cfg))]
    chosen = cfg.ablation.rows or names
    unknown = [r for r in chosen if r not in names]
    if unknown:
        raise MapdError(f"unknown ablation row {unknown[0]!r}", f"rows: {', '.join(names)}")
    return chosen


def seeds_of(cfg: RunConfig) -> list[int]:
    return cfg.ablation.seeds or [cfg.seed]


def _row_config(cfg: RunConfig, out: Path, name: str) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    data["review"]["require_correct_answer"] = False  # the paper's MAPD; one row adds the check
    data["dataset"]["feedback_from"] = "any"  # the paper's feedback choice in every row
    data["output_dir"] = str(out)
    data["name"] = f"{cfg.name}-{name}"
    data["rounds"] = 1
    data.pop("ablation")
    return data


def variant_config(cfg: RunConfig, root: Path, name: str, changes: Changes, seed: int) -> RunConfig:
    data = _row_config(cfg, root / name / f"seed-{seed}", name)
    for keys, value in changes:
        apply_override(data, keys, value)
    data["train"]["seed"] = seed
    data["eval"]["base"] = False  # measured once, in the untrained row
    # every row trains its own student; a server named by eval.trained serves one adapter
    # only, so each row is evaluated in-process from its own student/ folder
    data["eval"]["trained"] = None
    return validate_config(data, source=f"ablation row {name}, seed {seed}")


def untrained_config(cfg: RunConfig, root: Path) -> RunConfig:
    data = _row_config(cfg, root / UNTRAINED, UNTRAINED)
    data["eval"]["base"] = True
    return validate_config(data, source="ablation row untrained")


def _untrained_fingerprint(ucfg: RunConfig) -> str:
    from mapd.stages.evaluate import settings

    return fingerprint(settings(ucfg), [])


async def evaluate_untrained(ucfg: RunConfig) -> None:
    """The untrained student on the evaluation questions, unless done with these settings."""
    from mapd.stages.evaluate import eval_questions, evaluate

    run_dir, fp = ucfg.run_dir, _untrained_fingerprint(ucfg)
    with run_lock(run_dir):
        if stage_is_done(run_dir, "eval", fp):
            console.print("[dim]untrained: evaluated earlier with these settings; skipped[/]")
            return
        write_text_atomic(run_dir / "config.yaml", dump_run_config(ucfg))
        started = time.time()
        metrics = await evaluate(ucfg, run_dir, "base", ucfg.student, eval_questions(ucfg))
        outputs = ["eval/base/predictions.jsonl", "eval/base/metrics.json"]
        write_manifest(run_dir, "eval", fp, outputs, {"base": metrics}, started)


# --- the table ------------------------------------------------------------------------------


@dataclass
class RowResult:
    """A finished row: per seed (None for the untrained student) {question id: right?}."""

    name: str
    description: str
    right: dict[int | None, dict[str, bool]]
    examples: dict[int | None, tuple[int, int]] = field(default_factory=dict)  # (all, rationale)

    def items(self, seeds: list[int | None]) -> dict[tuple[int | None, str], bool]:
        """(seed, question id) -> right?; the untrained student answers alike for every seed."""
        out: dict[tuple[int | None, str], bool] = {}
        for s in seeds:
            per_question = self.right.get(s, self.right.get(None))
            out.update({(s, q): ok for q, ok in (per_question or {}).items()})
        return out


def read_right(predictions: Path) -> dict[str, bool]:
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    return {r["question_id"]: bool(r["correct"]) for r in rows}


def seeds_on_disk(cfg: RunConfig, row_folder: Path) -> list[int]:
    """This run's seeds, then those of earlier runs found in the row's folder."""
    found = sorted(
        int(p.name.removeprefix("seed-"))
        for p in row_folder.glob("seed-*")
        if p.name.removeprefix("seed-").lstrip("-").isdigit()
    )
    return list(dict.fromkeys([*seeds_of(cfg), *found]))


def collect_results(cfg: RunConfig, root: Path) -> list[RowResult]:
    """Every row and seed whose stages are finished and unchanged, in the table's order."""
    from mapd.stages.pipeline import is_current

    results = []
    ucfg = untrained_config(cfg, root)
    if stage_is_done(ucfg.run_dir, "eval", _untrained_fingerprint(ucfg)):
        base = read_right(ucfg.run_dir / "eval" / "base" / "predictions.jsonl")
        results.append(RowResult(UNTRAINED, "untrained student", {None: base}))
    for name, description, changes in variants(cfg):
        row = RowResult(name, description, {})
        for seed in seeds_on_disk(cfg, root / name):
            vcfg = variant_config(cfg, root, name, changes, seed)
            run_dir = vcfg.run_dir
            if all(is_current(vcfg, run_dir, stage) for stage in TRAINED_STAGES):
                row.right[seed] = read_right(run_dir / "eval" / "trained" / "predictions.jsonl")
                stats = read_json(run_dir / "dataset" / "stats.json")
                examples = stats["feedback_examples"] + stats["rationale_examples"]
                row.examples[seed] = (examples, stats["rationale_examples"])
        if row.right:
            results.append(row)
    return results


def table_line(row: RowResult, seeds: list[int | None], mapd: RowResult | None) -> dict[str, Any]:
    """One line of the table: `row` on `seeds` (pooled when several), and against MAPD."""
    own = row.items(seeds)
    correct, n = sum(own.values()), len(own)
    low, high = wilson_interval(correct, n)
    trained = seeds != [None]
    line: dict[str, Any] = {
        "row": row.name,
        "description": row.description,
        "seed": (seeds[0] if len(seeds) == 1 else "pooled") if trained else "",
        "correct": correct,
        "n": n,
        "accuracy": round(correct / n, 4) if n else None,
        "ci_low": round(low, 4),
        "ci_high": round(high, 4),
    }
    if trained and len(seeds) == 1:
        line["examples"], line["rationale_examples"] = row.examples[seeds[0]]
    elif not trained:
        line["examples"] = line["rationale_examples"] = 0
    if mapd is not None and row is not mapd:
        # the untrained student answers once: pairing it with every MAPD seed would count
        # its answers once per seed, so it is paired with MAPD's first seed only
        paired = [s for s in seeds if s in mapd.right] if trained else list(mapd.right)[:1]
        pair = paired_counts(row.items(paired), mapd.items(paired))
        if pair.n:
            line |= {
                "both_right": pair.both_right,
                "only_this": pair.only_a,
                "only_mapd": pair.only_b,
                "p_value": round(pair.p_value, 6),
                "paired_n": pair.n,
                "paired_seeds": len(paired),
            }
    return line


def table_lines(results: list[RowResult]) -> list[dict[str, Any]]:
    """Per row: one line per seed, then the pooled line when there are several seeds."""
    mapd = next((r for r in results if r.name == "mapd"), None)
    lines = []
    for row in results:
        seeds = list(row.right)
        groups = [[s] for s in seeds] + ([seeds] if len(seeds) > 1 else [])
        lines += [table_line(row, group, mapd) for group in groups]
    return lines


def format_p(p: float) -> str:
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def verdict(line: dict[str, Any]) -> str:
    """One sentence: what the paired comparison of this line with MAPD supports."""
    n, both = line["paired_n"], line["both_right"]
    mapd_acc, this_acc = (both + line["only_mapd"]) / n, (both + line["only_this"]) / n
    k = line["paired_seeds"]
    size = f"n = {n}" + (f" ({k} seeds × {n // k} questions)" if k > 1 else "")
    if line["p_value"] >= SIGNIFICANCE:
        finding = f"no significant difference at {size}"
    else:
        better = "MAPD" if line["only_mapd"] > line["only_this"] else line["description"]
        finding = f"{better} is better at the 5 % level, {size}"
    return (
        f"MAPD vs {line['description']}: {100 * mapd_acc:.1f} % vs {100 * this_acc:.1f} %, "
        f"{line['only_mapd']} vs {line['only_this']} discordant, {format_p(line['p_value'])}: "
        f"{finding}."
    )


COLUMNS = [
    "row",
    "description",
    "seed",
    "correct",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    "both_right",
    "only_this",
    "only_mapd",
    "p_value",
    "examples",
    "rationale_examples",
]


def render(lines: list[dict[str, Any]]) -> tuple[str, str]:
    """The table as Markdown (with the sentences) and as CSV."""
    md = [
        "# Ablation",
        "",
        "Accuracy with its 95 % Wilson interval; McNemar's exact test against MAPD on the same "
        "questions (pooled lines: every seed × question pair; the untrained student is paired "
        "with MAPD's first seed; a pooled interval counts those pairs as independent, so it is "
        "somewhat too narrow).",
        "",
        "| row | seed | accuracy (95 % CI) | right / n | both right | only this | only MAPD "
        "| McNemar p | training examples |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in lines:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f} %"
        ci = f"{100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f}"
        vs = [str(r.get(k, "-")) for k in ("both_right", "only_this", "only_mapd")]
        p = format_p(r["p_value"]).removeprefix("p = ") if "p_value" in r else "-"
        md.append(
            f"| {r['description']} | {r['seed'] if r['seed'] != '' else '-'} | {acc} ({ci}) | {r['correct']} / {r['n']} "
            f"| {' | '.join(vs)} | {p} | {r.get('examples', '')} |"
        )
    headline = {}
    for r in lines:  # a row's last line is its pooled one when it has several seeds
        headline[r["row"]] = r
    sentences = [verdict(r) for r in headline.values() if "paired_n" in r]
    if sentences:
        md += ["", "## What the data supports", "", *(f"- {s}" for s in sentences)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(lines)
    return "\n".join(md) + "\n", buf.getvalue()


def write_tables(cfg: RunConfig, root: Path) -> None:
    """ablation.md and ablation.csv from what is finished on disk (partial tables survive)."""
    md, csv_text = render(table_lines(collect_results(cfg, root)))
    write_text_atomic(root / "ablation.md", md)
    write_text_atomic(root / "ablation.csv", csv_text)


def row_configs(cfg: RunConfig) -> dict[tuple[str, int], RunConfig]:
    """The config of every selected trained row and seed, each checked (a MapdError names
    the first wrong one): what `mapd validate` checks, and `mapd ablate` before any row."""
    root = cfg.run_dir / "ablation"
    chosen = selected_rows(cfg)
    return {
        (name, seed): variant_config(cfg, root, name, changes, seed)
        for seed in seeds_of(cfg)
        for name, _, changes in variants(cfg)
        if name in chosen
    }


async def run_ablation(cfg: RunConfig) -> Path:
    """Run the selected rows for every seed, skipping finished ones; return the table's folder."""
    from mapd.stages.pipeline import run_pipeline

    root = cfg.run_dir / "ablation"
    chosen = selected_rows(cfg)
    trained = [v for v in variants(cfg) if v[0] in chosen]
    # every row's settings are checked before anything runs: a typo in a variant stops the
    # ablation now, not after hours of the rows before it
    configs = row_configs(cfg)
    if UNTRAINED in chosen:
        console.print("[bold]ablation row untrained[/]: the student before training")
        await evaluate_untrained(untrained_config(cfg, root))
        write_tables(cfg, root)
    for seed in seeds_of(cfg):
        for name, description, _ in trained:
            console.print(f"[bold]ablation row {name}, seed {seed}[/]: {description}")
            vcfg = configs[name, seed]
            share_imported(cfg.run_dir, vcfg.run_dir)
            await run_pipeline(vcfg, until="eval")
            write_tables(cfg, root)
    if not (root / "ablation.md").exists():
        write_tables(cfg, root)
    return root

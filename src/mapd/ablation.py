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
earlier runs with other `--rows`), its accuracy with a 95 % Wilson interval, an exact paired
test against the baseline row (`ablation.baseline`, MAPD by default) on the same questions,
its Holm-adjusted p-value, what its teachers cost (calls, estimated tokens, mistakes
covered), and one sentence per comparison saying what the data supports. The test takes the
question as the unit: each seed of a row is paired with the baseline's same seed, and
d_q = (seeds this row is right on q) - (seeds the baseline is right on q) goes into the
sign-flip exact test (`mapd.stats.seed_paired`); with one seed that is McNemar's exact test.
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
from mapd.stats import holm, seed_paired, wilson_interval

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
                # what the cascade needs, whatever the config says for the full committee
                (["dataset", "mode"], "mapd"),
                (["review", "reviewers"], None),
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
    """The rows to run: `ablation.rows`, checked, or every row; `ablation.baseline` checked."""
    names = [UNTRAINED, *(name for name, _, _ in variants(cfg))]
    chosen = cfg.ablation.rows or names
    unknown = [r for r in chosen if r not in names]
    if unknown:
        raise MapdError(f"unknown ablation row {unknown[0]!r}", f"rows: {', '.join(names)}")
    if cfg.ablation.baseline not in names:
        raise MapdError(
            f"unknown ablation baseline {cfg.ablation.baseline!r}", f"rows: {', '.join(names)}"
        )
    return chosen


def seeds_of(cfg: RunConfig) -> list[int]:
    return cfg.ablation.seeds or [cfg.seed]


def _row_config(cfg: RunConfig, out: Path, name: str) -> dict[str, Any]:
    data = cfg.model_dump(mode="json")
    data["review"]["require_correct_answer"] = False  # the paper's MAPD; one row adds the check
    data["dataset"]["feedback_from"] = "any"  # the paper's feedback choice in every row
    data["committee"]["mode"] = "full"  # the paper's committee; the cascade row sets its own
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
    """A finished row: per seed (None for the untrained student) {question id: right?}, and
    per trained seed its training examples and teacher cost."""

    name: str
    description: str
    right: dict[int | None, dict[str, bool]]
    examples: dict[int | None, tuple[int, int]] = field(default_factory=dict)  # (all, rationale)
    # {"teacher_calls", "teacher_tokens" (when its records are there), "mistakes_covered"}
    cost: dict[int | None, dict[str, int]] = field(default_factory=dict)

    def answers(self, seed: int | None) -> dict[str, bool] | None:
        """{question id: right?} of this seed; the untrained student answers alike in every one."""
        return self.right.get(seed, self.right.get(None))

    def items(self, seeds: list[int | None]) -> dict[tuple[int | None, str], bool]:
        """(seed, question id) -> right? over these seeds."""
        out: dict[tuple[int | None, str], bool] = {}
        for s in seeds:
            out.update({(s, q): ok for q, ok in (self.answers(s) or {}).items()})
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
    from mapd.stages.review.cost import recipe_cost

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
                row.cost[seed] = {"mistakes_covered": stats["mistakes_used"]}
                if (cost := recipe_cost(vcfg, run_dir)) is not None:
                    row.cost[seed] |= {
                        "teacher_calls": cost["calls"],
                        "teacher_tokens": cost["tokens"],
                    }
        if row.right:
            results.append(row)
    return results


def comparison(row: RowResult, seeds: list[int | None], baseline: RowResult) -> dict[str, Any]:
    """`row` on `seeds` against the baseline, question by question: each seed beside the
    baseline's same seed; a row evaluated once (the untrained student) beside every seed."""
    paired = list(baseline.right) if seeds == [None] else seeds
    pairs = [
        (mine, theirs)
        for s in paired
        if (mine := row.answers(s)) is not None and (theirs := baseline.answers(s)) is not None
    ]
    test = seed_paired(pairs)
    if not test.questions:
        return {}
    return {
        "baseline": baseline.name,
        "both_right": test.counts.both_right,
        "only_this": test.counts.only_a,
        "only_baseline": test.counts.only_b,
        "p_value": test.p_value,
        "paired_n": test.questions,
        "paired_seeds": test.seeds,
    }


def table_line(
    row: RowResult, seeds: list[int | None], baseline: RowResult | None
) -> dict[str, Any]:
    """One line of the table: `row` on `seeds` (pooled when several), and against the baseline."""
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
        line |= row.cost.get(seeds[0], {})
    elif trained:
        # the seeds share their teachers' data; a pooled line shows the cost when it agrees
        costs = [row.cost.get(s, {}) for s in seeds]
        line |= costs[0] if all(c == costs[0] for c in costs) else {}
    else:
        line["examples"] = line["rationale_examples"] = 0
    if baseline is not None and row is not baseline:
        line |= comparison(row, seeds, baseline)
    return line


def table_lines(results: list[RowResult], baseline: str = "mapd") -> list[dict[str, Any]]:
    """Per row: one line per seed, then the pooled line when there are several seeds; each
    row's last line (its headline) with its Holm-adjusted p-value."""
    base = next((r for r in results if r.name == baseline), None)
    lines = []
    for row in results:
        seeds = list(row.right)
        groups = [[s] for s in seeds] + ([seeds] if len(seeds) > 1 else [])
        lines += [table_line(row, group, base) for group in groups]
    headline = {line["row"]: line for line in lines}
    compared = [line for line in headline.values() if "p_value" in line]
    for line, p in zip(compared, holm([x["p_value"] for x in compared]), strict=True):
        line["p_holm"] = round(p, 6)
    for line in lines:
        if "p_value" in line:
            line["p_value"] = round(line["p_value"], 6)
    return lines


def format_p(p: float) -> str:
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def verdict(line: dict[str, Any], baseline: str) -> str:
    """One sentence: what the paired comparison of this headline line with the baseline row
    (described as `baseline`) supports, significant after Holm's adjustment."""
    both, this, base = line["both_right"], line["only_this"], line["only_baseline"]
    questions, k = line["paired_n"], line["paired_seeds"]
    size = f"{questions} questions" + (f" × {k} seeds" if k > 1 else "")
    if line["p_holm"] >= SIGNIFICANCE:
        finding = f"no significant difference on {size}"
    else:
        better = baseline if base > this else line["description"]
        finding = f"{better} is better at the 5 % level after Holm's adjustment, on {size}"
    pairs = questions * k
    return (
        f"{baseline} vs {line['description']}: {100 * (both + base) / pairs:.1f} % vs "
        f"{100 * (both + this) / pairs:.1f} %, {base} vs {this} discordant, "
        f"{format_p(line['p_value'])}, Holm {format_p(line['p_holm'])}: {finding}."
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
    "baseline",
    "both_right",
    "only_this",
    "only_baseline",
    "p_value",
    "p_holm",
    "examples",
    "rationale_examples",
    "teacher_calls",
    "teacher_tokens",
    "mistakes_covered",
]


def explanation(baseline: str | None) -> str:
    """The paragraph above the table: what its figures are."""
    against = (
        f"Each row against the baseline, {baseline} (`ablation.baseline`), on the same "
        "questions, with the question as the unit: each seed of a row is paired with the "
        "baseline's same seed (the untrained student, evaluated once, with every seed), "
        "d = the seeds this row is right minus those the baseline is right, and p is the exact "
        "two-sided sign-flip test of the d's (McNemar's exact test with one seed). Holm p "
        "adjusts each row's headline line (its pooled line with several seeds) for the number "
        "of comparisons; the sentences below use it. Both right, only this and only baseline "
        "count seed × question pairs. "
        if baseline
        else ""
    )
    return (
        "Accuracy with its 95 % Wilson interval (a pooled interval counts seed × question "
        f"pairs as independent, so it is somewhat too narrow). {against}Teacher calls and "
        "tokens: what the row's recipe asks of its teachers (tokens estimated from characters, "
        "as `mapd.stages.review.cost` counts them); mistakes covered: the mistakes with a "
        "training example. A pooled line repeats them when every seed's are the same."
    )


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(lines: list[dict[str, Any]]) -> tuple[str, str]:
    """The table as Markdown (with the sentences) and as CSV."""
    descriptions = {r["row"]: r["description"] for r in lines}
    baseline = next((r["baseline"] for r in lines if "baseline" in r), None)
    md = [
        "# Ablation",
        "",
        explanation(descriptions[baseline] if baseline else None),
        "",
        "| row | seed | accuracy (95 % CI) | right / n | both right | only this | only baseline "
        "| p | Holm p | training examples | teacher calls | teacher tokens (estimated) "
        "| mistakes covered |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in lines:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f} %"
        ci = f"{100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f}"
        vs = [_cell(r.get(k)) for k in ("both_right", "only_this", "only_baseline")]
        ps = [format_p(r[k]).removeprefix("p = ") if k in r else "-" for k in ("p_value", "p_holm")]
        cost = [_cell(r.get(k)) for k in ("teacher_calls", "teacher_tokens", "mistakes_covered")]
        md.append(
            f"| {r['description']} | {r['seed'] if r['seed'] != '' else '-'} | {acc} ({ci}) | {r['correct']} / {r['n']} "
            f"| {' | '.join(vs)} | {' | '.join(ps)} | {r.get('examples', '')} | {' | '.join(cost)} |"
        )
    sentences = [verdict(r, descriptions[r["baseline"]]) for r in lines if "p_holm" in r]
    if sentences:
        md += ["", "## What the data supports", "", *(f"- {s}" for s in sentences)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(lines)
    return "\n".join(md) + "\n", buf.getvalue()


def write_tables(cfg: RunConfig, root: Path) -> None:
    """ablation.md and ablation.csv from what is finished on disk (partial tables survive)."""
    md, csv_text = render(table_lines(collect_results(cfg, root), cfg.ablation.baseline))
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

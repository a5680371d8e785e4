"""`mapd ablate`: the paper's comparison table from one config, on the same data and seed.

Rows: the untrained student; each single teacher without review; the committee without
review; the committee with review (MAPD, the paper's acceptance rule and feedback choice);
MAPD with α = 0 (no learning from mistakes); MAPD with the answer check. Each row is a run folder
under `<output_dir>/ablation/<row>/`; the exam, the teaching and the reviews are the same
requests in every row, so after the first row they come from the cache for free, and only
training and evaluation are paid per row. Writes `ablation/ablation.md` and `ablation.csv`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from rich.console import Console

from mapd.config import RunConfig, validate_config
from mapd.stages.rundir import read_json, write_text_atomic

console = Console(stderr=True, soft_wrap=True)


def variants(cfg: RunConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """(row name, description, settings changed from the MAPD row)."""
    rows: list[tuple[str, str, dict[str, Any]]] = [
        ("mapd", "committee with peer review (MAPD)", {}),
        (
            "mapd-alpha0",
            "MAPD with alpha = 0 (no learning from mistakes)",
            {"train": {"alpha": 0.0}},
        ),
        (
            "mapd-answer-check",
            "MAPD with the answer check",
            {"review": {"require_correct_answer": True}},
        ),
        (
            "committee-no-review",
            "committee without review",
            {"dataset": {"mode": "committee_no_review"}},
        ),
    ]
    rows += [
        (
            f"single-{t.name}",
            f"single teacher {t.name} without review",
            {"dataset": {"mode": "single_teacher", "teacher": t.name}},
        )
        for t in cfg.teachers
    ]
    return rows


def variant_config(
    cfg: RunConfig, root: Path, name: str, changes: dict[str, Any], base_eval: bool
) -> RunConfig:
    data = cfg.model_dump(mode="json")
    data["review"]["require_correct_answer"] = False  # the paper's MAPD; one row adds the check
    data["dataset"]["feedback_from"] = "any"  # the paper's feedback choice in every row
    for section, values in changes.items():
        data[section].update(values)
    data["eval"]["base"] = base_eval
    data["output_dir"] = str(root / name)
    data["name"] = f"{cfg.name}-{name}"
    data["rounds"] = 1
    return validate_config(data, source=f"ablation row {name}")


def table(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The rows as Markdown and CSV."""
    md = ["| row | accuracy | training examples | rationale examples |", "|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f} %"
        md.append(f"| {r['description']} | {acc} | {r['examples']} | {r['rationale_examples']} |")
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=["row", "description", "accuracy", "examples", "rationale_examples"]
    )
    writer.writeheader()
    writer.writerows(rows)
    return "\n".join(md) + "\n", buf.getvalue()


async def run_ablation(cfg: RunConfig) -> Path:
    from mapd.stages.pipeline import run_pipeline

    root = cfg.run_dir / "ablation"
    rows: list[dict[str, Any]] = []
    for i, (name, description, changes) in enumerate(variants(cfg)):
        console.print(f"[bold]ablation row {name}[/]: {description}")
        vcfg = variant_config(cfg, root, name, changes, base_eval=i == 0)
        summaries = await run_pipeline(vcfg, until="eval")
        if i == 0 and "base" in summaries["eval"]:
            base = summaries["eval"]["base"]
            rows.append(
                {
                    "row": "untrained",
                    "description": "untrained student",
                    "accuracy": base["accuracy"],
                    "examples": 0,
                    "rationale_examples": 0,
                }
            )
        stats = read_json(vcfg.run_dir / "dataset" / "stats.json")
        rows.append(
            {
                "row": name,
                "description": description,
                "accuracy": summaries["eval"]["trained"]["accuracy"],
                "examples": stats["feedback_examples"] + stats["rationale_examples"],
                "rationale_examples": stats["rationale_examples"],
            }
        )
        md, csv_text = table(rows)
        write_text_atomic(
            root / "ablation.md", md
        )  # written after every row: partial tables survive
        write_text_atomic(root / "ablation.csv", csv_text)
    return root

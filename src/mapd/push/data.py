"""The dataset repo of `mapd push`: the training examples, every decision, and their card.

`write_data_folder(report, out, repo)` writes `out/` as the repo will hold it:

    README.md                                   the card; its YAML declares both configurations
    examples/train-00000-of-00001.parquet       the training examples, a `kind` column
    decisions/train-00000-of-00001.parquet      every rationale: teacher, scores, check, decision

so `datasets.load_dataset(out)` gives the examples and `load_dataset(out, "decisions")`
the decisions. Parquet is written from plain rows with fixed column types, so the same run
gives the same bytes and a second push uploads nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from mapd.push.facts import RunFacts
from mapd.records import Decision, Example, Mistake, Rationale, Review
from mapd.rundir import read_jsonl, write_text_atomic

EXAMPLES_SCHEMA = pa.schema(
    [(name, pa.string()) for name in ("id", "kind", "question_id", "teacher")]
    + [(name, pa.string()) for name in ("instruction", "input", "output")]
)
SCORE = pa.struct([("reviewer", pa.string()), ("score", pa.float64()), ("raw", pa.string())])
DECISIONS_SCHEMA = pa.schema(
    [
        ("rationale_id", pa.string()),
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("gold_answer", pa.string()),
        ("teacher", pa.string()),
        ("rationale", pa.string()),
        ("rationale_answer", pa.string()),
        ("answer_correct", pa.bool_()),
        ("reviews", pa.list_(SCORE)),
        ("aggregate", pa.float64()),
        ("accepted", pa.bool_()),
        ("reason", pa.string()),
    ]
)
SHARD = "train-00000-of-00001.parquet"


def example_rows(run_dir: Path) -> list[dict[str, Any]]:
    examples = read_jsonl(run_dir / "dataset" / "train.jsonl", Example)
    return [e.model_dump(include=set(EXAMPLES_SCHEMA.names)) for e in examples]


def decision_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per rationale, joined by id with its mistake, its reviews and its decision."""
    mistakes = {m.question_id: m for m in read_jsonl(run_dir / "mistakes.jsonl", Mistake)}
    rationales = {r.id: r for r in read_jsonl(run_dir / "rationales.jsonl", Rationale)}
    reviews: dict[str, list[Review]] = {}
    for review in read_jsonl(run_dir / "reviews.jsonl", Review):
        reviews.setdefault(review.rationale_id, []).append(review)
    rows = []
    for d in read_jsonl(run_dir / "decisions.jsonl", Decision):
        mistake, rationale = mistakes.get(d.question_id), rationales.get(d.rationale_id)
        rows.append(
            {
                "rationale_id": d.rationale_id,
                "question_id": d.question_id,
                "question": mistake.question if mistake else None,
                "gold_answer": mistake.answer if mistake else None,
                "teacher": d.teacher,
                "rationale": rationale.text if rationale else None,
                "rationale_answer": rationale.extracted if rationale else None,
                "answer_correct": d.answer_correct,
                "reviews": [
                    {"reviewer": r.reviewer, "score": r.score, "raw": r.raw}
                    for r in reviews.get(d.rationale_id, [])
                ],
                "aggregate": d.aggregate,
                "accepted": d.accepted,
                "reason": d.reason,
            }
        )
    return rows


def write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, compression="zstd")


def data_card(facts: RunFacts, repo: str, examples: int, decisions: int) -> str:
    header = {
        "configs": [
            {
                "config_name": "examples",
                "data_files": [{"split": "train", "path": f"examples/{SHARD}"}],
                "default": True,
            },
            {
                "config_name": "decisions",
                "data_files": [{"split": "train", "path": f"decisions/{SHARD}"}],
            },
        ],
        "task_categories": ["text-generation"],
        "tags": ["mapd", "distillation", "chain-of-thought", "peer-review", "synthetic"],
        "size_categories": ["n<1K" if examples < 1000 else "1K<n<10K"],
    }
    model_repo = repo[: -len("-data")]
    body = [
        f"# {repo.split('/')[1]}",
        "",
        f"Training data distilled by mapd (Mistake-Aware Peer-Review "
        f"Distillation) from a committee of {len(facts.teachers)} teachers, in run "
        f"`{facts.name}` on the task `{facts.task}`. The student trained on it: "
        f"[{model_repo}](https://huggingface.co/{model_repo}).",
        "",
        "```python",
        "from datasets import load_dataset",
        f'examples = load_dataset("{repo}")                # {examples} training examples',
        f'decisions = load_dataset("{repo}", "decisions")  # {decisions} reviewed rationales',
        "```",
        "",
        "- **examples**: `kind` is `feedback` (point out the mistakes in the student's "
        "answer) or `rationale` (answer step by step); `instruction` + `input` is the prompt, "
        "`output` the target; `teacher` wrote it.",
        "- **decisions**: every rationale the teachers wrote, with each reviewer's score and "
        "reply, the aggregate, whether its final answer matched the gold answer, and whether "
        "it was accepted and why.",
        "",
        *facts.markdown_sections(),
    ]
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + "\n".join(body) + "\n"


def write_data_folder(facts: RunFacts, out: Path, repo: str) -> tuple[int, int]:
    """Write the dataset repo's files into `out`; (examples, decisions) written."""
    examples, decisions = example_rows(facts.run_dir), decision_rows(facts.run_dir)
    write_parquet(out / "examples" / SHARD, examples, EXAMPLES_SCHEMA)
    write_parquet(out / "decisions" / SHARD, decisions, DECISIONS_SCHEMA)
    write_text_atomic(out / "README.md", data_card(facts, repo, len(examples), len(decisions)))
    return len(examples), len(decisions)

"""Gather everything the run report shows from a run folder: whatever files exist, nothing more.

    report = collect_run(Path("runs/demo"))

A run stopped early, or imported without exam attempts, simply has fewer sections: every
file is optional. Numbers are recomputed from the records (so they match the item table),
and the call ledger is read from the call database when it holds rows for this run.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from mapd.config import DatasetConfig, ReviewConfig, RunConfig, TrainConfig, read_yaml
from mapd.errors import MapdError
from mapd.records import CUT_OFF, Decision, Example, Feedback, Mistake, Rationale, Review
from mapd.rundir import read_jsonl
from mapd.stages.report.cascade import CascadeReport, asked_only, collect_cascade
from mapd.stages.review.cascade import NOT_ASKED
from mapd.stages.review.decisions import review_statistics

R = TypeVar("R", bound=BaseModel)

REASONS = [
    "accepted",
    "unreviewed",
    "wrong_answer",
    "low_score",
    "no_valid_review",
    "cut_off",
]
CASCADE_REASONS = [*REASONS, NOT_ASKED]  # an imported release holds what the cascade never asked


@dataclass
class StageRow:
    """One pipeline stage: how it finished, how long it took and what its LLM calls cost."""

    stage: str
    status: str  # "done", "imported" or "-" (calls recorded but no manifest)
    seconds: float | None = None
    calls: int = 0
    cached: int = 0
    failed: int = 0
    tokens: int = 0
    cost: float = 0.0


@dataclass
class TeacherItem:
    """One teacher's part of one mistake: feedback, rationale, its reviews and its decision."""

    feedback: str | None = None
    rationale: str | None = None
    extracted: str | None = None
    correct: bool | None = None
    accepted: bool | None = None
    reason: str | None = None
    aggregate: float | None = None
    reviews: list[tuple[str, float | None, str]] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)  # "feedback" and/or "rationale"
    step: int | None = None  # the cascade's step that asked this teacher


@dataclass
class Item:
    """One mistake as the table shows it; `used` is None when no dataset was built."""

    id: str
    question: str = ""
    gold: str = ""
    student_answer: str | None = None
    student_output: str = ""
    used: bool | None = None
    teachers: dict[str, TeacherItem] = field(default_factory=dict)


@dataclass
class AccuracyRow:
    label: str
    accuracy: float
    n: int | None = None
    note: str = ""


@dataclass
class RunReport:
    """Every number and item of one run's report; None or empty where the file was missing."""

    run_dir: Path
    name: str
    config: dict[str, Any]  # the run's config.yaml as written, {} when missing
    teachers: list[str]
    stages: list[StageRow]
    exam: dict[str, Any] | None
    counts: dict[str, int | None]
    review: dict[str, Any] | None
    disagreements: dict[str, list[tuple[str, str]]]
    accuracy: list[AccuracyRow]
    training: dict[str, Any] | None
    items: list[Item]
    left_out: list[str] = field(default_factory=list)  # what could not be read, and why
    cut_off: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    answers_cut_off: list[str] = field(default_factory=list)  # the student's, exam and eval
    unlike_evals: str | None = None  # base and trained asked in different ways
    failure: str | None = None  # the stage that stopped the run, and its error
    cascade: CascadeReport | None = None  # committee.mode: cascade


def read_optional(path: Path, model: type[R]) -> list[R] | None:
    return read_jsonl(path, model) if path.exists() else None


def read_json_optional(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def load_run_config(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The config as written, not validated (a report opens any run folder, even one whose
    config a newer mapd rejects), and why it could not be read when it exists but is
    unreadable."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}, None
    try:
        return read_yaml(path), None
    except MapdError as err:
        return {}, f"{err.message}; the settings section is left out"


def section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    value = cfg.get(name)
    return value if isinstance(value, dict) else {}


def over_defaults(cfg: dict[str, Any], name: str, model: type[BaseModel]) -> dict[str, Any]:
    """A config section as written, over the config models' own defaults: the report opens
    folders whose config a newer mapd may reject, so it reads the file unvalidated, but the
    defaults have one owner."""
    return model().model_dump(mode="json") | section(cfg, name)


def stage_rows(run_dir: Path) -> list[StageRow]:
    """Manifests and ledger rows joined by stage, in pipeline order. A finished stage counts
    the calls of its last run, the one its time is of; a stage without a manifest (`mapd
    eval`'s eval-base, say) counts the calls of every run."""
    rows: dict[str, StageRow] = {}
    last_runs: dict[str, tuple[float, float]] = {}
    for path in sorted((run_dir / "manifests").glob("*.json")):
        manifest = read_json_optional(path) or {}
        stage = manifest.get("stage", path.stem)
        imported = bool(manifest.get("imported"))
        rows[stage] = StageRow(
            stage, "imported" if imported else "done", None if imported else manifest.get("seconds")
        )
        started, finished = manifest.get("started_at"), manifest.get("finished_at")
        if isinstance(started, int | float) and isinstance(finished, int | float):
            last_runs[stage] = (started, finished)
    for stage, created, cached, ok, tokens, cost in ledger_calls(run_dir):
        last = last_runs.get(stage)
        if last and not last[0] <= created <= last[1]:
            continue  # another run of the stage than its last finished one
        row = rows.setdefault(stage, StageRow(stage, "-"))
        row.calls += 1
        row.cached += cached
        row.failed += not ok
        row.tokens += tokens
        row.cost += cost

    from mapd.stages.pipeline import STAGES  # the pipeline imports this module

    order_of = list(STAGES)

    def order(row: StageRow) -> tuple[int, str]:
        stage = row.stage.split("-", 1)[0]  # the ledger's eval-base and eval-trained go with eval
        known = stage in order_of
        return (order_of.index(stage) if known else len(order_of), row.stage)

    return sorted(rows.values(), key=order)


def calls_note(stages: list[StageRow]) -> str | None:
    """Which runs the stage table's calls are of, when it shows any."""
    if not any(s.calls for s in stages):
        return None
    every = any(s.calls and s.status == "-" for s in stages)
    return "Calls, tokens and cost are those of each stage's last run" + (
        "; a stage without a time (–) counts every run's." if every else "."
    )


def ledger_calls(run_dir: Path) -> list[tuple[str, float, int, int, int, float]]:
    """Every call the ledger holds for this run folder, whichever invocation made it:
    (stage, created, cached, ok, tokens, cost); [] when there is no call database."""
    from mapd.llm.home import mapd_home
    from mapd.llm.ledger import run_id
    from mapd.llm.store import DB_NAME, open_store

    db, run = mapd_home() / DB_NAME, run_id(run_dir, create=False)
    if not db.exists() or not run:
        return []
    with open_store(db) as store:
        return store.db.execute(
            "SELECT stage, created, cached, ok, prompt_tokens + completion_tokens, cost"
            " FROM calls WHERE run = ? ORDER BY id",
            (run,),
        ).fetchall()


def eval_metrics(run_dir: Path) -> dict[str, dict[str, Any]]:
    """eval/<label>/metrics.json by label: base first, then trained, then the rest."""
    labels = sorted(p.parent.name for p in (run_dir / "eval").glob("*/metrics.json"))
    labels.sort(key=lambda x: {"base": 0, "trained": 1}.get(x, 2))
    return {x: read_json_optional(run_dir / "eval" / x / "metrics.json") or {} for x in labels}


def accuracy_rows(run_dir: Path) -> list[AccuracyRow]:
    """eval/<label>/metrics.json (base first, then trained, then the rest) and ablation.csv."""
    rows = []
    for label, metrics in eval_metrics(run_dir).items():
        if isinstance(metrics.get("accuracy"), int | float):
            invalid = metrics.get("invalid_rate")
            note = f"{invalid:.0%} no answer" if isinstance(invalid, int | float) else ""
            rows.append(AccuracyRow(label, float(metrics["accuracy"]), metrics.get("n"), note))
    for ablation in (run_dir / "ablation.csv", run_dir / "ablation" / "ablation.csv"):
        if ablation.exists():
            rows += ablation_rows(ablation)
    return rows


def ablation_rows(path: Path) -> list[AccuracyRow]:
    """Rows of `mapd ablate`'s table (row or name, seed, description, accuracy, n, examples)."""
    rows = []
    with path.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                acc = float(row["accuracy"])
            except (KeyError, TypeError, ValueError):
                continue  # a row still training has no accuracy yet
            name = row.get("row") or row.get("name") or "?"
            if row.get("seed"):  # one line per seed, and a pooled one, since seeds exist
                name = f"{name} (seed {row['seed']})"
            n = int(row["n"]) if (row.get("n") or "").isdigit() else None
            examples = row.get("examples")
            rows.append(AccuracyRow(name, acc, n, f"{examples} examples" if examples else ""))
    return rows


def cut_off_counts(
    feedback: list[Feedback] | None,
    rationales: list[Rationale] | None,
    reviews: list[Review] | None,
) -> dict[str, dict[str, tuple[int, int]]]:
    """Per stage and teacher: (replies cut off at max_tokens, replies), from the records."""
    counts: dict[str, dict[str, tuple[int, int]]] = {}
    parts = [
        ("teach", [(x.teacher, x.finish_reason) for x in [*(feedback or []), *(rationales or [])]]),
        ("review", [(x.reviewer, x.finish_reason) for x in reviews or []]),
    ]
    for stage, replies in parts:
        for who, finish in replies:
            cut, total = counts.setdefault(stage, {}).get(who, (0, 0))
            counts[stage][who] = (cut + (finish == CUT_OFF), total + 1)
    return counts


def cut_off_line(counts: dict[str, dict[str, tuple[int, int]]]) -> str | None:
    """ "teach: a 3/20, b 0/20; review: a 1/10" when any reply was cut off, else None."""
    if not any(cut for per in counts.values() for cut, _ in per.values()):
        return None
    return "; ".join(
        f"{stage}: "
        + ", ".join(f"{who} {cut}/{total}" for who, (cut, total) in sorted(per.items()))
        for stage, per in counts.items()
    )


def answers_cut_off_lines(
    exam: dict[str, Any] | None, evals: dict[str, dict[str, Any]]
) -> list[str]:
    """The student's answers cut off at their token limit, from exam.json and each eval's
    metrics.json: "eval base: 12 of 613 answers cut off at eval.max_tokens=200; raise
    eval.max_tokens". Such an answer usually has no final answer, so it counts as wrong."""
    found = [("exam", exam or {}, "student.sampling.max_tokens")]
    found += [(f"eval {label}", m, "eval.max_tokens") for label, m in evals.items()]
    lines = []
    for name, summary, setting in found:
        if summary.get("cut_off"):
            answers = summary.get("questions") or summary["n"] * summary.get("samples", 1)
            lines.append(
                f"{name}: {summary['cut_off']} of {answers} answers cut off at "
                f"{setting}={summary.get('max_tokens')}; raise {setting}"
            )
    return lines


def unlike_evals_line(evals: dict[str, dict[str, Any]]) -> str | None:
    """Said when the untrained and the trained student were asked in different ways (one on a
    server, one in-process): a server's quantization, template or decoding moves one figure
    and not the other, so the difference is not training's alone."""
    base, trained = evals.get("base") or {}, evals.get("trained") or {}
    if not base.get("backend") or base.get("backend") == trained.get("backend", base["backend"]):
        return None
    where = {"openai": "on a server", "transformers": "in-process", "vllm": "in-process (vLLM)"}
    if base["backend"] == "openai":
        fix = (
            "serve the trained weights beside the base and set eval.trained (vllm serve BASE "
            "--enable-lora --lora-modules student=RUN_DIR/student/adapter), or run the student "
            "in-process (student.backend: transformers)"
        )
    else:
        fix = "remove eval.trained (the trained student then runs in-process too)"
    return (
        f"the untrained student was asked {where.get(base['backend'], base['backend'])} "
        f"({base.get('model')}), the trained one {where.get(trained['backend'], trained['backend'])} "
        f"({trained.get('model')}): a server's quantization, chat template or decoding moves one "
        f"figure and not the other. For a like-for-like difference, {fix}"
    )


def collect_run(run_dir: Path) -> RunReport:
    """Read every file of the run folder that exists; raise MapdError if it is not a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MapdError(f"run folder {run_dir} not found", "give the output_dir of a run")
    cfg, unreadable = load_run_config(run_dir)
    mistakes = read_optional(run_dir / "mistakes.jsonl", Mistake)
    feedback = read_optional(run_dir / "feedback.jsonl", Feedback)
    rationales = read_optional(run_dir / "rationales.jsonl", Rationale)
    reviews = read_optional(run_dir / "reviews.jsonl", Review)
    decisions = read_optional(run_dir / "decisions.jsonl", Decision)
    examples = read_optional(run_dir / "dataset" / "train.jsonl", Example)
    if not any(x is not None for x in (mistakes, feedback, rationales, decisions)) and not (
        (run_dir / "manifests").is_dir() or (run_dir / "config.yaml").exists()
    ):
        raise MapdError(
            f"{run_dir} holds no run: no config.yaml, manifests or records",
            "give the output_dir of a run, e.g. mapd report runs/demo",
        )
    exam = read_json_optional(run_dir / "exam.json")
    teachers = teacher_names(cfg, feedback, rationales)
    review_json = read_json_optional(run_dir / "review.json")
    cascade = collect_cascade(
        run_dir,
        review_json,
        over_defaults(cfg, "review", ReviewConfig),
        teachers,
        rationales,
        reviews,
    )
    asked = decisions
    if cascade is not None:  # the figures are of what the cascade asked for
        feedback, rationales, reviews = asked_only(cascade.trace, feedback, rationales, reviews)
        asked = None if decisions is None else [d for d in decisions if d.reason != NOT_ASKED]
    review = review_statistics(reviews or [], asked) if asked is not None else review_json
    if review:
        review = teachers_first(review, teachers)
    return RunReport(
        run_dir=run_dir,
        name=str(cfg.get("name") or run_dir.resolve().name),
        config=cfg,
        teachers=teachers,
        stages=stage_rows(run_dir),
        exam=exam,
        counts=funnel_counts(exam, mistakes, feedback, rationales, asked, examples),
        review=review,
        disagreements=disagreements(asked or []),
        accuracy=accuracy_rows(run_dir),
        training=read_json_optional(run_dir / "student" / "manifest.json"),
        items=mark_steps(
            build_items(mistakes, feedback, rationales, reviews, decisions, examples),
            cascade.trace if cascade else {},
        ),
        left_out=[unreadable] if unreadable else [],
        cut_off=cut_off_counts(feedback, rationales, reviews),
        answers_cut_off=answers_cut_off_lines(exam, eval_metrics(run_dir)),
        unlike_evals=unlike_evals_line(eval_metrics(run_dir)),
        cascade=cascade,
    )


def teacher_names(
    cfg: dict[str, Any], feedback: list[Feedback] | None, rationales: list[Rationale] | None
) -> list[str]:
    """The committee in config order, plus any teacher found only in the records."""
    teachers = [t for t in cfg.get("teachers") or [] if isinstance(t, dict)]
    names = [str(t.get("name") or str(t.get("model", "?")).rsplit("/", 1)[-1]) for t in teachers]
    for rec in [*(feedback or []), *(rationales or [])]:
        if rec.teacher not in names:
            names.append(rec.teacher)
    return names


def teachers_first(review: dict[str, Any], teachers: list[str]) -> dict[str, Any]:
    """The per-teacher and per-reviewer tables in committee order rather than by name."""

    def order(table: dict[str, Any]) -> dict[str, Any]:
        rank = {t: i for i, t in enumerate(teachers)}
        return dict(sorted(table.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))

    return review | {
        key: order(review.get(key) or {}) for key in ("per_teacher", "score_histogram")
    }


def funnel_counts(
    exam: dict[str, Any] | None,
    mistakes: list[Mistake] | None,
    feedback: list[Feedback] | None,
    rationales: list[Rationale] | None,
    decisions: list[Decision] | None,
    examples: list[Example] | None,
) -> dict[str, int | None]:
    def size(records: list[Any] | None) -> int | None:
        return None if records is None else len(records)

    return {
        "questions": exam.get("questions") if exam else None,
        "mistakes": size(mistakes),
        "feedback": size(feedback),
        "rationales": size(rationales),
        "accepted": None if decisions is None else sum(d.accepted for d in decisions),
        "examples": size(examples),
        "mistakes_used": None
        if examples is None
        else len({e.question_id for e in examples if e.kind == "rationale"}),
    }


def passed_review(d: Decision) -> bool:
    """Reviewed and scored above the threshold. A rationale rejected for its wrong answer
    without a review (the cascade asks nobody about it) has no aggregate."""
    return d.reason == "accepted" or (d.reason == "wrong_answer" and d.aggregate is not None)


def disagreements(decisions: list[Decision]) -> dict[str, list[tuple[str, str]]]:
    """(question id, teacher) where the peer review and the answer check disagree."""
    passed = [d for d in decisions if passed_review(d)]
    failed = [d for d in decisions if d.reason in ("low_score", "no_valid_review")]
    return {
        "passed_review_wrong_answer": [
            (d.question_id, d.teacher) for d in passed if not d.answer_correct
        ],
        "failed_review_right_answer": [
            (d.question_id, d.teacher) for d in failed if d.answer_correct
        ],
    }


def build_items(
    mistakes: list[Mistake] | None,
    feedback: list[Feedback] | None,
    rationales: list[Rationale] | None,
    reviews: list[Review] | None,
    decisions: list[Decision] | None,
    examples: list[Example] | None,
) -> list[Item]:
    """One item per mistake (or per question id seen in any record), joined by id."""
    items: dict[str, Item] = {}
    for m in mistakes or []:
        items[m.question_id] = Item(
            m.question_id, m.question, m.answer, m.student_answer, m.student_output
        )

    def part(question_id: str, teacher: str) -> TeacherItem:
        item = items.setdefault(question_id, Item(question_id))
        return item.teachers.setdefault(teacher, TeacherItem())

    for f in feedback or []:
        part(f.question_id, f.teacher).feedback = f.text
    by_rationale: dict[str, TeacherItem] = {}
    for r in rationales or []:
        t = by_rationale[r.id] = part(r.question_id, r.teacher)
        t.rationale, t.extracted, t.correct = r.text, r.extracted, r.correct
    for rv in reviews or []:
        by_rationale.setdefault(rv.rationale_id, part(rv.question_id, rv.author)).reviews.append(
            (rv.reviewer, rv.score, rv.raw)
        )
    for d in decisions or []:
        t = by_rationale.get(d.rationale_id) or part(d.question_id, d.teacher)
        t.accepted, t.reason, t.aggregate = d.accepted, d.reason, d.aggregate
    if examples is not None:
        used: dict[str, list[Example]] = defaultdict(list)
        for e in examples:
            used[e.question_id].append(e)
            part(e.question_id, e.teacher).trained.append(e.kind)
        for item in items.values():
            item.used = any(e.kind == "rationale" for e in used.get(item.id, []))
    return list(items.values())


def mark_steps(items: list[Item], trace: dict[str, list[dict[str, Any]]]) -> list[Item]:
    """Each teacher's step in the cascade, from its trace (cascade.jsonl)."""
    by_id = {i.id: i for i in items}
    for question_id, steps in trace.items():
        for s in steps:
            if question_id in by_id:
                by_id[question_id].teachers.setdefault(s["teacher"], TeacherItem()).step = s["step"]
    return items


# --- summaries shared by the HTML and Markdown renderings ----------------------------------


def config_summary(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """The settings a reader needs to interpret the numbers, as (label, value) pairs."""
    if not cfg:
        return []
    task, student = section(cfg, "task"), section(cfg, "student")
    r, d, t = (
        over_defaults(cfg, "review", ReviewConfig),
        over_defaults(cfg, "dataset", DatasetConfig),
        over_defaults(cfg, "train", TrainConfig),
    )
    teachers = [x for x in cfg.get("teachers") or [] if isinstance(x, dict)]
    limit = f", at most {task['limit']} per split" if task.get("limit") else ""
    reviewers = f"{r['reviewers']} per rationale" if r.get("reviewers") else "every other teacher"

    def on(flag: object) -> str:
        return "on" if flag else "off"

    return [
        ("task", f"{task.get('name', '?')} ({task.get('source', 'hub')}){limit}"),
        (
            "student",
            f"{student.get('name', '')}: {student.get('model', '?')} ({student.get('backend', '?')})",
        ),
        ("teachers", ", ".join(f"{x.get('name', '')}: {x.get('model', '?')}" for x in teachers)),
        (
            "review",
            f"{r['aggregate']} of valid scores > {r['threshold']:g} on "
            f"{r['scale_min']}..{r['scale_max']}, by {reviewers}; "
            f"answer check {on(r['require_correct_answer'])}",
        ),
        (
            "dataset",
            f"mode {d['mode']}, pick {d['pick']}, "
            f"feedback from {d['feedback_from']} teachers, "
            f"answer line {on(d['answer_line'])}",
        ),
        (
            "train",
            f"{t['method']}, {epochs_text(t['epochs'])}, lr {t['lr']}, "
            f"alpha {t['alpha']}, batch {t['batch_size']}×{t['grad_accum']}, "
            f"{t['prompt_format']} prompts",
        ),
        ("seed", str(cfg.get("seed", RunConfig.model_fields["seed"].default))),
    ]


def epochs_text(epochs: Any) -> str:
    """`2.0` -> "2 epochs", `1` -> "1 epoch", `1.5` -> "1.5 epochs"."""
    if not isinstance(epochs, int | float):
        return f"{epochs} epochs"
    return f"{epochs:g} epoch{'' if epochs == 1 else 's'}"


def funnel_steps(report: RunReport) -> list[tuple[str, int, str]]:
    """(label, count, note) from questions to training examples, for the steps that exist."""
    c = report.counts
    mistakes = c.get("mistakes")
    steps: list[tuple[str, int, str]] = []

    def add(label: str, value: int | None, note: str = "") -> None:
        if value is not None:
            steps.append((label, value, note))

    add("questions", c.get("questions"), "in the exam")
    q = c.get("questions")
    add("mistakes", mistakes, f"{mistakes / q:.0%} answered wrong" if q and mistakes else "")
    for key in ("feedback", "rationales"):
        n = c.get(key)
        add(key, n, f"{n / mistakes:.1f} per mistake" if n is not None and mistakes else "")
    accepted, rationales = c.get("accepted"), c.get("rationales")
    share = (
        f"{accepted / rationales:.0%} of rationales" if accepted is not None and rationales else ""
    )
    add("accepted", accepted, share)
    used = c.get("mistakes_used")
    note = ""
    if used is not None and mistakes:
        note = f"from {used} mistakes; {mistakes - used} dropped"
    add("training examples", c.get("examples"), note)
    return steps


def score_labels(report: RunReport) -> list[str]:
    """Histogram columns: the config's score scale, any other score seen, then `invalid`."""
    review = over_defaults(report.config, "review", ReviewConfig)
    lo, hi = int(review["scale_min"]), int(review["scale_max"])
    labels = [str(s) for s in range(lo, hi + 1)]
    seen = {k for h in (report.review or {}).get("score_histogram", {}).values() for k in h}
    extra = sorted((k for k in seen if k not in labels and k != "invalid"), key=float)
    return sorted(labels + extra, key=float) + (["invalid"] if "invalid" in seen else [])

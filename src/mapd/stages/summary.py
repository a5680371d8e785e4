"""The summary printed at the end of `mapd run`: funnel, acceptance, accuracy, cost, next steps."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from mapd.config import RunConfig
from mapd.errors import MapdError
from mapd.llm.ledger import ledger_totals
from mapd.llm.store import open_store


def _ledger_line(cfg: RunConfig) -> str:
    try:
        with open_store() as store:
            rows = ledger_totals(store, cfg.run_dir)
    except MapdError:
        return "no LLM calls recorded"
    calls = sum(r.calls for r in rows)
    cached = sum(r.cached for r in rows)
    tokens = sum(r.prompt_tokens + r.completion_tokens for r in rows)
    cost = sum(r.cost for r in rows)
    return f"{calls} calls ({cached} from the cache), {tokens:,} tokens, ${cost:.4f}"


def _cut_off_line(cfg: RunConfig) -> str | None:
    from mapd.records import Feedback, Rationale, Review
    from mapd.stages.report.collect import cut_off_counts, cut_off_line, read_optional

    run_dir = cfg.run_dir
    return cut_off_line(
        cut_off_counts(
            read_optional(run_dir / "feedback.jsonl", Feedback),
            read_optional(run_dir / "rationales.jsonl", Rationale),
            read_optional(run_dir / "reviews.jsonl", Review),
        )
    )


def print_summary(
    cfg: RunConfig, summaries: dict[str, Any], started: float, console: Console
) -> None:
    from mapd.stages.report.cascade import cascade_line
    from mapd.stages.report.collect import answers_cut_off_lines, unlike_evals_line

    exam, teach, review = summaries.get("exam"), summaries.get("teach"), summaries.get("review")
    build, evals = summaries.get("build"), summaries.get("eval")
    lines = [f"[bold]{cfg.name}[/] finished in {time.time() - started:.0f} s"]
    cascade = (review or {}).get("cascade")
    if review and build:
        examples = build["feedback_examples"] + build["rationale_examples"]
        feedback = (teach or {}).get("feedback", "?")
        if cascade:  # an import's teach stage holds every teacher's; the cascade asked fewer
            feedback = cascade["cost"]["calls_by_kind"]["feedback"]
        lines.append(
            f"  funnel: {(exam or {}).get('questions', '?')} questions -> "
            f"{build['mistakes']} mistakes -> {feedback} feedback + "
            f"{review['rationales']} rationales -> {review['accepted']} accepted -> "
            f"{examples} training examples"
        )
        per = ", ".join(
            f"{t} {c['accepted']}/{c['rationales']}" for t, c in review["per_teacher"].items()
        )
        lines.append(f"  accepted per teacher: {per}")
    if cascade:
        lines.append(f"  {cascade_line(cascade, len(cfg.teachers))}")
    if evals:
        acc = ", ".join(f"{label} {100 * m['accuracy']:.1f} %" for label, m in evals.items())
        lines.append(f"  accuracy on {cfg.eval.split} (n={next(iter(evals.values()))['n']}): {acc}")
    for line in answers_cut_off_lines(exam, evals or {}):
        lines.append(f"  [yellow]{line}[/]")
    if unlike := unlike_evals_line(evals or {}):
        lines.append(f"  [yellow]not asked the same way: {unlike}[/]")
    if cut := _cut_off_line(cfg):
        lines.append(f"  [yellow]replies cut off at max_tokens (not trained): {cut}[/]")
    lines.append(f"  calls of this run folder so far: {_ledger_line(cfg)}")
    report = cfg.run_dir / "report.html"
    if report.exists():
        lines.append(f"  report: {report}")
    if all(t.model in (cfg.student.model, cfg.student.trained_from) for t in cfg.teachers):
        lines.append(
            "  note: every teacher here shares the student's weights and differs only in decoding "
            "and instructions: this shows the mechanics, not a quality claim."
        )
        lines.append(
            "  next: point `teachers` at real models, e.g. configs/examples/hosted-teachers-vllm-student.yaml"
        )
    console.print("\n".join(lines), highlight=False)

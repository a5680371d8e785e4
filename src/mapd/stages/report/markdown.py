"""The run report's summary as Markdown, for terminals and pull requests (no item table).

print(render_markdown(collect_run(run_dir)))
"""

from __future__ import annotations

from mapd.stages.report.cascade import (
    CASCADE_CALLS_NOTE,
    COST_HEAD,
    STEP_HEAD,
    cost_note,
    cost_table,
    covered_text,
    step_table,
)
from mapd.stages.report.collect import (
    RunReport,
    calls_note,
    config_summary,
    cut_off_line,
    funnel_steps,
    score_labels,
)


def md_cell(text: object) -> str:
    """A table cell: pipes and newlines would break the row."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(head: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(report: RunReport) -> str:
    out = [f"# mapd report: {md_cell(report.name)}", ""]
    out += [f"- **{k}**: {md_cell(v)}" for k, v in config_summary(report.config)]
    out += [f"- **left out**: {md_cell(note)}" for note in report.left_out] + [""]
    out += stages_md(report) + cut_off_md(report) + funnel_md(report) + cascade_md(report)
    out += review_md(report)
    out += accuracy_md(report)
    return "\n".join(out).rstrip() + "\n"


def cut_off_md(report: RunReport) -> list[str]:
    line = cut_off_line(report.cut_off)
    if line is None:
        return []
    return ["## Replies cut off at max_tokens (not trained)", "", line, ""]


def stages_md(report: RunReport) -> list[str]:
    if not report.stages:
        return []
    rows: list[list[object]] = [
        [
            s.stage,
            "imported"
            if s.status == "imported"
            else (f"{s.seconds:.1f} s" if s.seconds is not None else "–"),
            f"{s.calls:,}",
            f"{s.cached:,}",
            f"{s.tokens:,}",
            f"${s.cost:.4f}",
        ]
        for s in report.stages
    ]
    note = calls_note(report.stages)
    return (
        ["## Stages", ""]
        + md_table(["stage", "time", "calls", "cache hits", "tokens", "cost"], rows)
        + ([note, ""] if note else [])
        + ([CASCADE_CALLS_NOTE, ""] if report.cascade else [])
    )


def funnel_md(report: RunReport) -> list[str]:
    steps = funnel_steps(report)
    if not steps:
        return []
    return ["## Funnel", ""] + md_table(
        ["step", "count", ""], [[k, f"{v:,}", n] for k, v, n in steps]
    )


def cascade_md(report: RunReport) -> list[str]:
    c = report.cascade
    if c is None:
        return []
    out = ["## Cascade", "", f"Teachers asked in turn: {' → '.join(c.order)}.", ""]
    if c.not_asked:
        out += [
            f"{c.not_asked:,} rationales on file were never asked for; the figures leave them out.",
            "",
        ]
    out += md_table(STEP_HEAD, step_table(c)) + [f"{covered_text(c)}.", ""]
    out += ["Cost against the full committee:", ""] + md_table(COST_HEAD, cost_table(c))
    return out + [cost_note(c), ""]


def review_md(report: RunReport) -> list[str]:
    stats = report.review
    if not stats:
        return []
    out = ["## Peer review", ""]
    rows: list[list[object]] = []
    for teacher, c in stats.get("per_teacher", {}).items():
        n = c.get("rationales", 0)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(c.get("reasons", {}).items()))
        rows.append(
            [
                teacher,
                f"{c.get('accepted', 0)}/{n}",
                f"{c.get('accepted', 0) / n:.0%}" if n else "–",
                reasons,
            ]
        )
    out += md_table(["teacher", "accepted", "rate", "reasons"], rows)
    labels = score_labels(report)
    hist = stats.get("score_histogram", {})
    out += ["Scores given, per reviewer:", ""]
    out += md_table(
        ["reviewer", *labels], [[r, *(h.get(k, 0) for k in labels)] for r, h in hist.items()]
    )
    agreement = stats.get("agreement", {})
    if agreement:
        out += ["Reviewer agreement:", ""]
        out += md_table(
            ["pair", "both scored", "identical", "within one"],
            [
                [
                    k.replace("~", " / "),
                    v["n"],
                    _pct(v.get("exact_rate")),
                    _pct(v.get("within_1_rate")),
                ]
                for k, v in agreement.items()
            ],
        )
    d = report.disagreements
    out += [
        f"Peer review against the answer check: {len(d['passed_review_wrong_answer'])} rationales "
        f"passed review with a wrong final answer; {len(d['failed_review_right_answer'])} failed "
        "review with a right one.",
        "",
    ]
    return out


def accuracy_md(report: RunReport) -> list[str]:
    cut = [f"- {md_cell(line)}" for line in report.answers_cut_off]
    cut += (
        [f"- not asked the same way: {md_cell(report.unlike_evals)}"] if report.unlike_evals else []
    )
    cut += [""] if cut else []
    if not report.accuracy:
        return ["## Accuracy", "", *cut] if cut else []
    rows = [
        [r.label, f"{r.accuracy:.1%}", r.n if r.n is not None else "", r.note]
        for r in report.accuracy
    ]
    return ["## Accuracy", ""] + md_table(["model", "accuracy", "n", ""], rows) + cut


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.0%}"

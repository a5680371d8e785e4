"""The run report as one self-contained HTML page: inline CSS, inline SVG charts, inline JS.

    page = render_html(collect_run(run_dir))

All text from the run (model output, ids, names) is escaped here or, for the items, sent as
JSON inside a `<script type="application/json">` block with `<`, `>` and `&` escaped, and
set with `textContent` by the page's script. The page makes no network request.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from html import escape
from importlib.resources import files
from typing import Any

from mapd import __version__
from mapd.stages.report import charts
from mapd.stages.report.cascade import (
    CASCADE_CALLS_NOTE,
    COST_HEAD,
    STEP_HEAD,
    cost_note,
    cost_table,
    covered_text,
    ratio_text,
    step_table,
)
from mapd.stages.report.collect import (
    CASCADE_REASONS,
    REASONS,
    Item,
    RunReport,
    calls_note,
    config_summary,
    cut_off_line,
    epochs_text,
    funnel_steps,
    score_labels,
    section,
)

LINKS_SHOWN = 40


def static_text(name: str) -> str:
    return files("mapd.stages.report").joinpath("static", name).read_text(encoding="utf-8")


def failure_html(report: RunReport) -> str:
    if not report.failure:
        return ""
    return (
        f'<div class="failed" role="alert"><strong>This run failed.</strong> '
        f"{escape(report.failure)}<br>What follows is what the folder held when it stopped.</div>\n"
    )


def render_html(report: RunReport) -> str:
    sections = [
        overview_html(report),
        funnel_html(report),
        cascade_html(report),
        review_html(report),
        checks_html(report),
        accuracy_html(report),
        table_html(report),
    ]
    when = time.strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>mapd report: {escape(report.name)}</title>
<style>{static_text("report.css")}</style>
</head>
<body>
<header class="top">
<h1>{escape(report.name)}</h1>
<div class="sub">mapd run report · run folder <code>{escape(report.run_dir.resolve().name)}</code> · {when}</div>
</header>
<main>
{failure_html(report)}{kpis_html(report)}
{"".join(s for s in sections if s)}
<footer>made by mapd {escape(__version__)} · <code>mapd report RUN_DIR</code> rebuilds this page</footer>
</main>
<script type="application/json" id="mapd-data">{json_for_script(items_payload(report))}</script>
<script>{static_text("report.js")}</script>
</body>
</html>
"""


def json_for_script(data: Any) -> str:
    """JSON that cannot end its <script> block or open a comment, whatever the text holds."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def items_payload(report: RunReport) -> dict[str, Any]:
    """The items as compact arrays (layout documented at the top of report.js)."""
    teachers = report.teachers
    index = {t: i for i, t in enumerate(teachers)}

    def part(item: Item, teacher: str) -> list[Any] | None:
        p = item.teachers.get(teacher)
        if p is None:
            return None
        reviews = [[index.get(who, who), score, raw] for who, score, raw in p.reviews]
        trained = " and ".join(p.trained)
        row = [p.feedback, p.rationale, p.extracted, p.correct, p.reason, p.aggregate, reviews]
        return [*row, trained, p.step] if report.cascade else [*row, trained]

    items = [
        [i.id, i.question, i.gold, i.student_answer, i.student_output, i.used]
        + [[part(i, t) for t in teachers]]
        for i in report.items
    ]
    colors = [charts.color_for(k) for k in range(len(teachers))]
    return {"teachers": teachers, "colors": colors, "items": items, "cascade": bool(report.cascade)}


def kpi(label: str, value: str, note: str = "") -> str:
    return (
        f'<div class="kpi"><div class="k">{escape(label)}</div><div class="v">{escape(value)}</div>'
        f'<div class="n">{escape(note)}</div></div>'
    )


def kpis_html(report: RunReport) -> str:
    c, cards = report.counts, []
    if report.exam:
        acc = report.exam.get("accuracy")
        note = f"student accuracy {acc:.1%}" if isinstance(acc, int | float) else ""
        cards.append(kpi("questions", f"{report.exam.get('questions', 0):,}", note))
    if c.get("mistakes") is not None:
        cards.append(kpi("mistakes", f"{c['mistakes']:,}", "the student's wrong answers"))
    if c.get("accepted") is not None and c.get("rationales"):
        rate = c["accepted"] / c["rationales"]  # type: ignore[operator]
        cards.append(
            kpi("rationales kept", f"{c['accepted']:,}", f"{rate:.0%} of {c['rationales']:,}")
        )
    if c.get("examples") is not None:
        cards.append(
            kpi("training examples", f"{c['examples']:,}", f"from {c['mistakes_used']:,} mistakes")
        )
    acc = {row.label: row.accuracy for row in report.accuracy}
    if "base" in acc and "trained" in acc:
        delta = (acc["trained"] - acc["base"]) * 100
        cards.append(
            kpi("accuracy", f"{acc['trained']:.1%}", f"{delta:+.1f} points over {acc['base']:.1%}")
        )
    if report.cascade:
        c = report.cascade
        cards.append(
            kpi(
                "cascade calls",
                f"{c.cost.get('calls', 0):,}",
                f"{ratio_text(c.ratio)} the full committee's {c.full_calls:,}",
            )
        )
    calls = sum(s.calls for s in report.stages)
    if calls:
        cached = sum(s.cached for s in report.stages)
        cost = sum(s.cost for s in report.stages)
        cards.append(kpi("LLM calls", f"{calls:,}", f"{cached:,} from cache · ${cost:,.2f}"))
    return f'<div class="kpis">{"".join(cards)}</div>' if cards else ""


def overview_html(report: RunReport) -> str:
    config = "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in config_summary(report.config)
    )
    missing = " ".join(report.left_out) or "No config.yaml in the run folder."
    left = (
        f'<dl class="config">{config}</dl>' if config else f'<p class="dim">{escape(missing)}</p>'
    )

    return (
        '<section id="overview"><h2>Run</h2><div class="two"><div><h3>Settings</h3>'
        f"{left}{training_html(report)}</div><div><h3>Stages</h3>{stages_table(report)}"
        f"{cut_off_html(report)}</div></div></section>"
    )


def cut_off_html(report: RunReport) -> str:
    """Replies stopped at the token limit, per stage and teacher (none trained)."""
    line = cut_off_line(report.cut_off)
    if line is None:
        return ""
    return (
        '<p class="warn" id="cut-off"><b>Replies cut off at max_tokens</b> (not trained; '
        f"raise the teachers' sampling.max_tokens): {escape(line)}</p>"
    )


def training_html(report: RunReport) -> str:
    m = report.training
    if not m:
        return ""
    losses = ", ".join(f"{k} {v:.3f}" for k, v in (m.get("final_losses") or {}).items())
    rows = [
        ("method", f"{m.get('method', '?')} on {m.get('base_model', '?')}"),
        (
            "steps",
            f"{m.get('steps', '?')} ({epochs_text(m.get('epochs', '?'))}, {m.get('seconds', '?')} s)",
        ),
        ("final losses", losses or "–"),
    ]
    body = "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in rows)
    return f'<h3>Training</h3><dl class="config">{body}</dl>'


def stages_table(report: RunReport) -> str:
    if not report.stages:
        return '<p class="dim">No stage has finished yet.</p>'
    head = "<tr><th>stage</th><th>time</th><th>calls</th><th>cache hits</th><th>failed</th><th>tokens</th><th>cost</th></tr>"
    rows = []
    for s in report.stages:
        when = (
            "imported"
            if s.status == "imported"
            else (f"{s.seconds:,.1f} s" if s.seconds is not None else "–")
        )
        rows.append(
            f"<tr><td>{escape(s.stage)}</td><td>{when}</td><td>{s.calls:,}</td><td>{s.cached:,}</td>"
            f"<td>{s.failed:,}</td><td>{s.tokens:,}</td><td>${s.cost:,.4f}</td></tr>"
        )
    total_s = sum(s.seconds or 0 for s in report.stages)
    rows.append(
        f'<tr class="total"><td>total</td><td>{total_s:,.1f} s</td>'
        f"<td>{sum(s.calls for s in report.stages):,}</td><td>{sum(s.cached for s in report.stages):,}</td>"
        f"<td>{sum(s.failed for s in report.stages):,}</td><td>{sum(s.tokens for s in report.stages):,}</td>"
        f"<td>${sum(s.cost for s in report.stages):,.4f}</td></tr>"
    )
    note = (
        calls_note(report.stages) or "No LLM calls recorded for this run folder in the call ledger."
    )
    cascade = f'<p class="dim">{escape(CASCADE_CALLS_NOTE)}</p>' if report.cascade else ""
    return (
        f'<table class="stats">{head}{"".join(rows)}</table><p class="dim">{escape(note)}</p>'
        + cascade
    )


def funnel_html(report: RunReport) -> str:
    steps = funnel_steps(report)
    if not steps:
        return ""
    palette = {
        "questions": "#8da3c7",
        "mistakes": "#d9534f",
        "feedback": "#72b7b2",
        "rationales": "#4c78a8",
        "accepted": "#2f9e5b",
        "training examples": "#b279a2",
    }
    chart = charts.bar_rows(
        steps,
        "funnel from questions to training examples",
        [palette.get(s[0], "#4c78a8") for s in steps],
    )
    how = (
        "the cascade asks one teacher at a time for a rationale, until one is accepted; only that "
        "teacher's feedback is asked for"
        if report.cascade
        else "each teacher writes feedback and its own rationale"
    )
    return (
        '<section id="funnel"><h2>From questions to training examples</h2>'
        f'<p class="lead">Every wrong answer becomes a mistake; {how}; '
        "the peers' reviews (and the answer check, when on) decide which rationales are kept "
        "and, with <code>dataset.feedback_from: accepted</code>, whose feedback is trained.</p>"
        f"{chart}</section>"
    )


def cascade_html(report: RunReport) -> str:
    """The order asked, each step's outcomes, mistakes covered, and the cost against the full
    committee's."""
    c = report.cascade
    if c is None:
        return ""
    chart = charts.stacked_rows(
        [
            (f"{s['step']} · {s['teacher']}", {"accepted": s["accepted"], **s["moved_on"]})
            for s in c.steps
        ],
        REASONS,
        charts.REASON_COLORS,
        "outcomes per cascade step",
    )
    not_asked = (
        f" {c.not_asked:,} rationales on file were never asked for: they are left out of the "
        "figures and marked <i>not asked</i> in the mistakes table."
        if c.not_asked
        else ""
    )
    return (
        '<section id="cascade"><h2>Cascade</h2>'
        f'<p class="lead">Teachers asked in turn: {escape(" → ".join(c.order))}. A mistake goes to '
        "the next teacher only when the rationale is rejected: at once, unreviewed, for a wrong "
        "final answer or a reply cut off; after review, for a low score or no valid review."
        f"{not_asked}</p><p><b>{escape(covered_text(c))}</b>.</p>{chart}"
        f"<h3>Steps</h3>{stats_table(STEP_HEAD, step_table(c))}"
        f"<h3>Cost against the full committee</h3>{stats_table(COST_HEAD, cost_table(c))}"
        f'<p class="dim">{escape(cost_note(c))}</p></section>'
    )


def stats_table(head: list[str], rows: list[list[str]]) -> str:
    """A `stats` table of text cells (escaped here)."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(x)}</td>" for x in row) + "</tr>" for row in rows)
    return f'<table class="stats"><tr>{th}</tr>{body}</table>'


def review_html(report: RunReport) -> str:
    stats = report.review
    if not stats:
        return ""
    per = stats.get("per_teacher", {})
    acceptance = charts.stacked_rows(
        [(t, c.get("reasons", {})) for t, c in per.items()],
        REASONS,
        charts.REASON_COLORS,
        "acceptance per teacher",
    )
    labels = score_labels(report)
    hists = []
    for reviewer, counts in stats.get("score_histogram", {}).items():
        k = report.teachers.index(reviewer) if reviewer in report.teachers else len(hists)
        total = sum(counts.values())
        valid = [float(s) * n for s, n in counts.items() if s != "invalid"]
        n_valid = total - counts.get("invalid", 0)
        mean = f"mean {sum(valid) / n_valid:.2f}" if n_valid else "no valid score"
        hists.append(
            f'<div class="hist"><div class="name">{escape(reviewer)}</div><div class="dim">{total:,} reviews · {mean}</div>'
            f"{charts.histogram(counts, labels, charts.color_for(k), f'scores given by {reviewer}')}</div>"
        )
    invalid = stats.get("invalid_reviews", 0)
    return (
        '<section id="review"><h2>Peer review</h2>'
        f'<p class="lead">{stats.get("reviews", 0):,} reviews of {stats.get("rationales", 0):,} rationales; '
        f"{invalid:,} invalid (no score in 1..5). A teacher never reviews its own rationale.</p>"
        f"<h3>Acceptance per teacher (author)</h3>{acceptance}"
        f'<h3>Scores given, per reviewer</h3><div class="cols">{"".join(hists)}</div>'
        f"{agreement_html(report)}</section>"
    )


def agreement_html(report: RunReport) -> str:
    agreement = (report.review or {}).get("agreement", {})
    if not agreement:
        return ""
    pairs = {tuple(k.split("~", 1)): v for k, v in agreement.items()}
    names = sorted(
        {n for pair in pairs for n in pair},
        key=lambda n: (
            n not in report.teachers,
            report.teachers.index(n) if n in report.teachers else 0,
            n,
        ),
    )

    def cell(key: str) -> Any:
        def get(a: str, b: str) -> tuple[float, str] | None:
            v = pairs.get((a, b)) or pairs.get((b, a))
            if not v or v.get(f"{key}_rate") is None:
                return None
            tip = (
                f"{a} and {b}: {v['exact']} of {v['n']} identical, {v['within_1']} within one point"
            )
            return v[f"{key}_rate"], tip

        return get

    exact = charts.heatmap(names, cell("exact"), "reviewers giving the same score")
    near = charts.heatmap(names, cell("within_1"), "reviewers within one point")
    return (
        "<h3>Reviewer agreement</h3>"
        '<p class="lead">Share of rationales reviewed by both where the two scores are identical '
        "(left) or at most one point apart (right).</p>"
        f'<div class="cols"><div>{exact}</div><div>{near}</div></div>'
    )


def checks_html(report: RunReport) -> str:
    d = report.disagreements
    if not any(d.values()) and report.review is None:
        return ""
    kept = {(i.id, t) for i in report.items for t, p in i.teachers.items() if p.accepted}
    passed = d["passed_review_wrong_answer"]
    n_kept = sum(pair in kept for pair in passed)
    on = section(report.config, "review").get("require_correct_answer")
    fate = (
        f"{n_kept:,} of them kept for training"
        + (" (the answer check is off)" if on is False else "")
        + ("; the others rejected by the answer check" if n_kept < len(passed) else "")
    )
    cards = [
        check_card("Passed peer review, wrong final answer", passed, fate, "passed_wrong", "wrong"),
        check_card(
            "Failed peer review, right final answer",
            d["failed_review_right_answer"],
            "rejected although their final answer matches the gold answer",
            "failed_right",
            "right",
        ),
    ]
    return (
        '<section id="checks"><h2>Peer review against the answer check</h2>'
        '<p class="lead">Where the reviewers and the rationale\'s own final answer disagree. Click an id to open the item.</p>'
        f'<div class="check-cards">{"".join(cards)}</div></section>'
    )


def check_card(title: str, pairs: list[tuple[str, str]], note: str, check: str, cls: str) -> str:
    per = Counter(t for _, t in pairs)
    chips = "".join(f'<span class="pill">{escape(t)} {n:,}</span>' for t, n in per.most_common())
    links = " ".join(
        f'<a href="#item={escape(qid)}">{escape(qid)} · {escape(t)}</a>'
        for qid, t in pairs[:LINKS_SHOWN]
    )
    more = (
        f'<span class="dim">and {len(pairs) - LINKS_SHOWN:,} more</span>'
        if len(pairs) > LINKS_SHOWN
        else ""
    )
    button = f'<button data-check="{check}">show all in the table</button>' if pairs else ""
    return (
        f'<div class="check {cls}"><div class="dim">{escape(title)}</div><div class="big">{len(pairs):,}</div>'
        f'<div class="dim">{escape(note)}</div><div>{chips}</div>{button}<div class="links">{links}{more}</div></div>'
    )


def accuracy_html(report: RunReport) -> str:
    exam = ""
    if report.exam and isinstance(report.exam.get("accuracy"), int | float):
        exam = f" On its training questions (the exam) the student scored {report.exam['accuracy']:.1%}."
    if not report.accuracy:
        return (
            '<section id="accuracy"><h2>Accuracy</h2>'
            f'<p class="lead">No evaluation in this run folder yet (eval/base, eval/trained).{escape(exam)}</p>'
            f"{answers_cut_off_html(report)}</section>"
        )
    rows = [
        (r.label, r.accuracy, "\n".join(x for x in (f"n={r.n:,}" if r.n else "", r.note) if x))
        for r in report.accuracy
    ]
    acc = {r.label: r.accuracy for r in report.accuracy}
    if "base" in acc and "trained" in acc:
        delta = (acc["trained"] - acc["base"]) * 100
        exam = f" The trained student is {delta:+.1f} points over the untrained one.{exam}"
    return (
        '<section id="accuracy"><h2>Accuracy before and after</h2>'
        f'<p class="lead">On the evaluation split.{escape(exam)}</p>{charts.columns(rows, "accuracy")}'
        f"{answers_cut_off_html(report)}</section>"
    )


def answers_cut_off_html(report: RunReport) -> str:
    """The student's answers stopped at the token limit (mostly counted wrong), exam and eval;
    and base and trained asked in different ways."""
    unlike = ""
    if report.unlike_evals:
        unlike = (
            '<p class="warn" id="unlike-evals"><b>Not asked the same way</b>: '
            f"{escape(report.unlike_evals)}</p>"
        )
    if not report.answers_cut_off:
        return unlike
    lines = "<br>".join(escape(line) for line in report.answers_cut_off)
    return (
        f'<p class="warn" id="answers-cut-off"><b>Answers cut off at max_tokens</b>: {lines}</p>'
        + unlike
    )


def table_html(report: RunReport) -> str:
    if not report.items:
        return ""
    teacher_opts = "".join(
        f'<option value="{escape(t)}">{escape(t)}</option>' for t in report.teachers
    )
    reasons = CASCADE_REASONS if report.cascade else REASONS
    reason_opts = "".join(f'<option value="{r}">{r.replace("_", " ")}</option>' for r in reasons)
    heads = "".join(f'<th style="width:132px">{escape(t)}</th>' for t in report.teachers)
    return f"""<section id="mistakes"><h2>Mistakes</h2>
<p class="lead">Every mistake with each teacher's decision. Click a row for the student's answer, each teacher's feedback, rationale and reviews.</p>
<div class="controls">
<input type="search" id="q" placeholder="Search questions, answers, feedback, rationales, reviews…" aria-label="search">
<select id="f-teacher" aria-label="teacher"><option value="">any teacher</option>{teacher_opts}</select>
<select id="f-decision" aria-label="decision"><option value="">any decision</option><option value="accepted">accepted</option><option value="rejected">rejected</option></select>
<select id="f-reason" aria-label="reason"><option value="">any reason</option>{reason_opts}</select>
<select id="f-check" aria-label="review against answer">
<option value="">all mistakes</option>
<option value="passed_wrong">passed review, wrong answer</option>
<option value="failed_right">failed review, right answer</option>
<option value="used">kept for training</option>
<option value="dropped">dropped (no rationale kept)</option>
</select>
<span class="count" id="count"></span>
</div>
<table class="items"><thead><tr><th style="width:150px">id</th><th>question</th><th style="width:70px">gold</th><th style="width:80px">student</th>{heads}<th style="width:78px">dataset</th></tr></thead>
<tbody id="rows"></tbody></table>
<div class="pager"><button id="prev">‹ previous</button><span id="page"></span><button id="next">next ›</button></div>
</section>"""

"""The report and the run's summary of a cascade committee (`committee.mode: cascade`).

The release fixture (4 mistakes, 3 teachers) imported and replayed as a cascade, mixtral
first: it covers 2 mistakes with 17 calls where the full committee makes 48 (4 × 12) and
covers 3. Two of its rationales are never asked for. A live cascade over the loopback
classroom has no full committee on file: the report gives the calls it would make.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from tests.stages.scripted_classroom import reply, write_config

from mapd.config import load_config
from mapd.release import import_release
from mapd.stages.pipeline import run_pipeline
from mapd.stages.report import markdown_report, write_report
from mapd.stages.report.cascade import cascade_line
from mapd.stages.report.collect import collect_run
from mapd.stages.report.html import items_payload
from mapd.stages.summary import print_summary
from mapd.testing.loopback import LoopbackServer

RELEASE = sorted((Path(__file__).resolve().parents[2] / "fixtures" / "release").glob("*.json"))
CASCADE = [
    "committee.mode=cascade",
    "review.require_correct_answer=true",
    "dataset.feedback_from=accepted",
]
DATA_BLOCK = re.compile(r'<script type="application/json" id="mapd-data">(.*?)</script>', re.S)


def build(config: Path, *overrides: str) -> dict:
    return asyncio.run(run_pipeline(load_config(config, list(overrides)), until="build"))


def imported(tmp_path: Path, *overrides: str) -> Path:
    run_dir = tmp_path / "rel"
    import_release("svamp", RELEASE, run_dir)
    build(run_dir / "config.yaml", *overrides)
    return run_dir


@pytest.fixture()
def cascade_run(tmp_path: Path) -> Path:
    return imported(tmp_path, *CASCADE)


def stats(run_dir: Path) -> dict:
    return json.loads((run_dir / "review.json").read_text())["cascade"]


def test_the_cascade_section_shows_its_figures(cascade_run: Path):
    c = stats(cascade_run)
    assert (c["covered"], c["cost"]["calls"], c["full_committee"]["calls"]) == (2, 17, 48)
    page = write_report(cascade_run).read_text(encoding="utf-8")
    md = markdown_report(cascade_run)
    section = page[page.index('id="cascade"') : page.index('id="review"')]
    assert "mixtral-8x7b → gpt-3.5-turbo → gemini-1.0-pro" in section
    assert "2 of 4 mistakes covered (50%); 2 left without an accepted rationale" in section
    # step 2: gpt-3.5-turbo asked 4, accepted 2; one wrong answer, one low score
    step2 = "<tr><td>2</td><td>gpt-3.5-turbo</td><td>4</td><td>2</td><td>1</td><td>0</td><td>1</td><td>0</td></tr>"
    assert step2 in section
    assert "<td>cascade</td><td>17</td>" in section
    assert "<td>full committee</td><td>48</td>" in section
    assert "<td>ratio</td><td>0.35x</td>" in section  # 17 / 48
    assert (
        "<td>8.50</td>" in section and "<td>16.00</td>" in section
    )  # calls per example: 17/2, 48/3
    assert "| 2 | gpt-3.5-turbo | 4 | 2 | 1 | 0 | 1 | 0 |" in md
    assert re.search(r"\| cascade \| 17 \| [\d,]+ \| \$[\d.]+ \| 2 \| 8\.50 \|", md)
    assert re.search(r"\| full committee \| 48 \| [\d,]+ \| \$[\d.]+ \| 3 \| 16\.00 \|", md)
    assert "| ratio | 0.35x |" in md
    for text in (page, md):
        assert "the teach stage makes the review calls too" in text
        assert "2 rationales on file were never asked for" in text


def test_the_report_counts_what_the_cascade_asked_for(cascade_run: Path):
    c = stats(cascade_run)
    report = collect_run(cascade_run)
    kinds = c["cost"]["calls_by_kind"]
    assert report.counts["feedback"] == kinds["feedback"] == 2  # the accepted teachers' only
    assert report.counts["rationales"] == kinds["rationale"] == 10
    assert report.review["reviews"] == kinds["review"]  # not the release's 8 per mistake
    # a wrong answer is rejected unreviewed: it never passed a review
    assert report.disagreements["passed_review_wrong_answer"] == []
    payload = items_payload(report)
    assert payload["cascade"] is True
    first = next(i for i in payload["items"] if i[0] == "svamp-release-0")
    by_teacher = dict(zip(payload["teachers"], first[6], strict=True))
    assert (by_teacher["mixtral-8x7b"][4], by_teacher["mixtral-8x7b"][8]) == ("wrong_answer", 1)
    assert (by_teacher["gpt-3.5-turbo"][4], by_teacher["gpt-3.5-turbo"][8]) == ("accepted", 2)
    gemini = by_teacher["gemini-1.0-pro"]
    assert gemini[4] == "not_asked" and gemini[8] is None and gemini[1] is None  # no text kept
    assert '<option value="not_asked">not asked</option>' in write_report(cascade_run).read_text()


def test_a_full_committee_folder_has_no_cascade_section(tmp_path: Path):
    run_dir = imported(tmp_path, "review.require_correct_answer=true")
    page = write_report(run_dir).read_text(encoding="utf-8")
    md = markdown_report(run_dir)
    assert 'id="cascade"' not in page and "## Cascade" not in md
    assert "teach stage makes the review calls" not in page + md
    assert 'value="not_asked"' not in page  # no such reason to filter by
    assert json.loads(DATA_BLOCK.search(page).group(1))["cascade"] is False
    assert collect_run(run_dir).counts["feedback"] == 12  # every teacher's, as asked


def test_a_live_cascade_gives_the_calls_the_full_committee_would_make(tmp_path: Path):
    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url)
        build(config, *CASCADE)
    run_dir = tmp_path / "run"
    report = collect_run(run_dir)
    assert report.cascade is not None and report.cascade.full is None
    mistakes = report.cascade.mistakes
    assert mistakes > 0
    page = write_report(run_dir).read_text(encoding="utf-8")
    row = f"<td>full committee, calls it would make</td><td>{mistakes * 12:,}</td><td>–</td><td>–</td>"
    assert row in page  # 3 teachers: 6 feedback and rationales, 6 reviews; no tokens, no cost
    assert f"{mistakes:,} × (2×3 + 3×2)" in markdown_report(run_dir)
    calls = {s.stage: s.calls for s in report.stages}
    assert calls["teach"] == report.cascade.cost["calls"] and calls.get("review", 0) == 0


def test_the_run_summary_has_a_cascade_line(cascade_run: Path):
    summaries = build(cascade_run / "config.yaml")
    out = io.StringIO()
    cfg = load_config(cascade_run / "config.yaml")
    print_summary(cfg, summaries, 0.0, Console(file=out, width=200))
    text = out.getvalue()
    assert "cascade: 2 of 4 mistakes covered with 17 calls (full committee: 48, 0.35x)" in text
    assert "-> 2 feedback + 10 rationales" in text  # the feedback the cascade asked for
    live = stats(cascade_run) | {"full_committee": None}
    assert cascade_line(live, 3) == (
        "cascade: 2 of 4 mistakes covered with 17 calls (the full committee would make: 48, 0.35x)"
    )

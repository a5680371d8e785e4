"""The HTML page: self-contained, model text escaped, item data round-trips through its JSON."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from mapd.stages.report import write_report
from mapd.stages.report.collect import collect_run
from mapd.stages.report.html import items_payload, json_for_script, render_html

DATA_BLOCK = re.compile(r'<script type="application/json" id="mapd-data">(.*?)</script>', re.S)


def test_markup_in_model_text_is_never_markup(poisoned_run: Path, attack: str):
    page = write_report(poisoned_run).read_text(encoding="utf-8")
    assert page.count("<script") == 2  # the data block and the page's own script
    assert "<img" not in page and "<b>bold</b>" not in page
    data = json.loads(DATA_BLOCK.search(page).group(1))
    first = data["items"][0]
    assert first[1].endswith(attack)  # the question, intact once parsed
    texts = [first[6][0][0], first[6][0][1], first[6][0][6][0][2]]
    assert all(t.endswith(attack) for t in texts)  # feedback, rationale, review reply


def test_json_for_script_escapes_what_could_close_the_block():
    text = json_for_script({"a": "</script><!-- & -->"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><!-- & -->"}


def test_page_is_self_contained(release_run: Path):
    page = render_html(collect_run(release_run))
    assert "<link" not in page and " src=" not in page
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}  # the SVG namespace, never fetched
    assert "default-src 'none'" in page  # the page may not fetch anything


def test_page_shows_every_section_of_a_built_run(release_run: Path):
    report = collect_run(release_run)
    page = render_html(report)
    for anchor in ("overview", "funnel", "review", "checks", "accuracy", "mistakes"):
        assert f'id="{anchor}"' in page
    assert page.count('<svg class="chart"') == 1 + 1 + 3 + 2  # funnel, acceptance, 3 hist, 2 maps
    assert 'href="#item=svamp-release-0"' in page  # a disagreement links to its item
    payload = items_payload(report)
    assert payload["teachers"] == report.teachers
    assert len(payload["items"]) == 4 and all(len(i[6]) == 3 for i in payload["items"])


def test_a_run_with_only_a_config_still_renders(release_run: Path, tmp_path: Path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text((release_run / "config.yaml").read_text())
    page = write_report(bare).read_text(encoding="utf-8")
    assert "paper-svamp" in page and 'id="mistakes"' not in page
    assert "No evaluation in this run folder yet" in page


def test_an_unreadable_config_is_said_and_the_rest_still_written(release_run: Path):
    (release_run / "config.yaml").write_text("name: [unclosed\n  ::: garbage\n")
    for fmt in ("html", "md"):
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("mapd")),
                "report",
                str(release_run),
                "--format",
                fmt,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "warning: " in result.stderr and "config.yaml: malformed YAML" in result.stderr
        assert "settings section is left out" in result.stderr
    assert "left out" in result.stdout and "mistakes" in result.stdout.lower()
    page = (release_run / "report.html").read_text(encoding="utf-8")
    assert "malformed YAML" in page and 'id="mistakes"' in page

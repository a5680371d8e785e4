"""The report in headless Chromium: no console error, the search filters, a row opens,
model text holding markup stays text, and ids and decision badges fit their columns. Skipped
when Chromium or its driver is not installed (CI installs Debian's chromium and
chromium-driver in .ci/run)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from mapd.records import Decision, Mistake, Rationale
from mapd.stages.report import write_report
from mapd.testing.browser import INSTALL_HINT, chromium_paths, headless_chromium

SCREENSHOTS = Path(__file__).resolve().parents[3] / "bench" / "results"

pytestmark = pytest.mark.skipif(
    chromium_paths() is None, reason=f"headless Chromium not installed: {INSTALL_HINT}"
)


@pytest.fixture()
def browser(tmp_path: Path):
    pytest.importorskip("selenium.webdriver", reason="pip install -e '.[test]'")
    driver = headless_chromium(tmp_path / "chromium-profile")
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def wait_for(driver, script: str, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def test_report_in_headless_chromium(browser, poisoned_run: Path, attack: str, tmp_path: Path):
    from selenium.webdriver.common.by import By

    page = write_report(poisoned_run)
    browser.get(page.resolve().as_uri())
    wait_for(browser, "return window.mapdReady === true")

    rows = browser.find_elements(By.CSS_SELECTOR, "tr.row")
    assert len(rows) == 4
    browser.find_element(By.ID, "q").send_keys("svamp-release-3")
    wait_for(browser, "return document.querySelectorAll('tr.row').length === 1")
    assert "1 matching" in browser.find_element(By.ID, "count").text
    browser.find_element(By.ID, "q").clear()
    browser.find_element(By.ID, "q").send_keys("zzz-nothing-matches")
    wait_for(browser, "return document.querySelectorAll('tr.row').length === 0")
    browser.execute_script(
        "var q = document.getElementById('q'); q.value = '';q.dispatchEvent(new Event('input'));"
    )

    # the first item carries markup in its question, feedback, rationale and a review
    browser.find_elements(By.CSS_SELECTOR, "tr.row")[0].click()
    detail = browser.find_element(By.CSS_SELECTOR, "tr.detail")
    assert len(detail.find_elements(By.CSS_SELECTOR, ".card.teacher")) == 3
    browser.execute_script("document.querySelector('tr.detail details.review').open = true")
    shown = detail.text
    assert shown.count("window.pwned=1") >= 3 and "<b>bold</b>" in shown
    assert browser.execute_script("return window.pwned === undefined")
    assert not detail.find_elements(By.TAG_NAME, "img")

    # a link from the answer-check section opens its item
    browser.find_element(By.CSS_SELECTOR, '#checks a[href="#item=svamp-release-9"]').click()
    wait_for(browser, "return document.querySelector('tr.row.open td.qid') !== null")
    assert browser.find_element(By.CSS_SELECTOR, "tr.row.open td.qid").text == "svamp-release-9"

    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []

    browser.set_window_size(
        1400, min(browser.execute_script("return document.body.scrollHeight"), 5000)
    )
    browser.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / "report-test.png")  # git-ignored, for a person to look at


def write_records(path: Path, records: list[Any]) -> None:
    path.write_text("".join(r.to_json() + "\n" for r in records))


@pytest.fixture()
def long_ids_run(tmp_path: Path) -> Path:
    """Mistakes whose ids share a long prefix, decided with the longest reasons there are."""
    run_dir = tmp_path / "long"
    run_dir.mkdir()
    ids = [f"gsm_symbolic-1-{i:05d}" for i in (7, 42, 123)]
    teachers = ["alice", "bob", "carol"]
    reasons = ["cut_off", "no_valid_review", "wrong_answer"]
    write_records(
        run_dir / "mistakes.jsonl",
        [
            Mistake(
                question_id=q,
                question="What is 2 + 3?",
                answer="5",
                answer_type="number",
                student_output="1",
                student_answer="1",
            )
            for q in ids
        ],
    )
    write_records(
        run_dir / "rationales.jsonl",
        [
            Rationale(
                id=f"{q}|{t}", question_id=q, teacher=t, text="4", extracted="4", correct=False
            )
            for q in ids
            for t in teachers
        ],
    )
    write_records(
        run_dir / "decisions.jsonl",
        [
            Decision(
                rationale_id=f"{q}|{t}",
                question_id=q,
                teacher=t,
                accepted=False,
                reason=reason,  # type: ignore[arg-type]
                aggregate=None if reason == "cut_off" else 3.5,
                answer_correct=False,
            )
            for q in ids
            for t, reason in zip(teachers, reasons, strict=True)
        ],
    )
    return run_dir


def test_ids_and_decision_badges_fit_their_columns(browser, long_ids_run: Path):
    page = write_report(long_ids_run)
    browser.get(page.resolve().as_uri())
    wait_for(browser, "return window.mapdReady === true")
    ids = browser.execute_script(
        "return Array.from(document.querySelectorAll('td.qid'), td =>"
        " [td.textContent, td.title, td.scrollWidth <= td.clientWidth])"
    )
    assert ids == [
        [q, q, True]
        for q in ("gsm_symbolic-1-00007", "gsm_symbolic-1-00042", "gsm_symbolic-1-00123")
    ]
    badges = browser.execute_script(
        "return Array.from(document.querySelectorAll('tr.row .chip'), c => {"
        " var td = c.parentElement.getBoundingClientRect(), r = c.getBoundingClientRect();"
        " return [c.textContent, r.left >= td.left && r.right <= td.right]; })"
    )
    assert len(badges) == 9 and "cut off at max_tokens" in badges[0][0]
    assert [fits for _, fits in badges] == [True] * 9, badges

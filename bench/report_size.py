"""Benchmark: the run report of a large run (10,000 mistakes × 3 teachers) stays usable.

    python bench/report_size.py                 # 10,000 mistakes, writes bench/results/report_size.json
    python bench/report_size.py --mistakes 2000

Generates a synthetic run folder (mistakes, feedback, rationales, two reviews per rationale,
decisions, a dataset; text lengths like the paper's released SVAMP data), builds its report,
and opens it in headless Chromium to measure the time from navigation start until the table is
interactive (`window.mapdReady`), a search keystroke, and opening a row. Prints the figures
and the report's size relative to the run's own JSONL records.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from mapd.config import preset_path
from mapd.records import Example, Feedback, Mistake, Rationale, Review
from mapd.rundir import write_json, write_jsonl
from mapd.stages.report import write_report
from mapd.stages.review.decisions import decide_all, review_statistics
from mapd.testing.browser import chromium_paths, headless_chromium

SEARCH = ("7", "77", "777", "777 apples")  # typed one keystroke at a time
RESULTS = Path(__file__).resolve().parent / "results"
TEACHERS = ["gpt-3.5-turbo", "gemini-1.0-pro", "mixtral-8x7b"]
WORDS = [
    "the",
    "student",
    "apples",
    "oranges",
    "groups",
    "each",
    "total",
    "number",
    "divided",
    "multiplied",
    "added",
    "subtract",
    "answer",
    "first",
    "then",
    "so",
    "therefore",
    "step",
    "bananas",
    "books",
    "pages",
    "hours",
    "minutes",
    "more",
    "less",
    "left",
    "friends",
    "bought",
    "sold",
    "gave",
    "received",
    "price",
    "cost",
    "dollars",
    "per",
    "equals",
    "correct",
    "mistake",
    "because",
]


def sentence(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    length = 0
    while length < chars:
        words.append(rng.choice(WORDS) if rng.random() > 0.15 else str(rng.randint(1, 999)))
        length += len(words[-1]) + 1
    return " ".join(words).capitalize() + "."


def generate_run(run_dir: Path, n: int, seed: int = 731) -> None:
    """A run folder as `mapd import-release` + `mapd build` would leave it, with synthetic text."""
    from mapd.config import ReviewConfig

    rng = random.Random(seed)
    config = yaml.safe_load(preset_path("paper/svamp").read_text())
    config.update(name=f"synthetic-{n}", output_dir=".")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    mistakes, feedback, rationales, reviews = [], [], [], []
    for i in range(n):
        qid, gold = f"synthetic-{i}", str(rng.randint(1, 500))
        mistakes.append(
            Mistake(
                question_id=qid,
                question=sentence(rng, 180) + " How many are left?",
                answer=gold,
                answer_type="number",
                student_output=sentence(rng, 160),
                student_answer=str(rng.randint(1, 500)),
            )
        )
        for t in TEACHERS:
            rid = f"{qid}|{t}"
            feedback.append(Feedback(id=rid, question_id=qid, teacher=t, text=sentence(rng, 560)))
            right = rng.random() < 0.8
            answer = gold if right else str(int(gold) + 1)
            text = f"{sentence(rng, 300)} The answer is {answer}."
            rationales.append(
                Rationale(
                    id=rid, question_id=qid, teacher=t, text=text, extracted=answer, correct=right
                )
            )
            for reviewer in (r for r in TEACHERS if r != t):
                score = float(rng.choice([5, 5, 5, 4, 3, 2, 1] if right else [5, 3, 2, 1, 1]))
                reviews.append(
                    Review(
                        id=f"{rid}|{reviewer}",
                        rationale_id=rid,
                        question_id=qid,
                        author=t,
                        reviewer=reviewer,
                        score=score,
                        raw=f"{sentence(rng, 200)} [{int(score)}]",
                    )
                )
    decisions = decide_all(rationales, reviews, ReviewConfig(), reviewed=True)
    accepted = {d.rationale_id for d in decisions if d.accepted}
    examples = []
    for m in mistakes:
        kept = [f"{m.question_id}|{t}" for t in TEACHERS if f"{m.question_id}|{t}" in accepted]
        if kept:
            rid = rng.choice(kept)
            for kind in ("feedback", "rationale"):
                examples.append(
                    Example(
                        id=f"{rid}:{kind}",
                        kind=kind,
                        question_id=m.question_id,
                        teacher=rid.split("|")[1],
                        instruction="...",
                        input=m.question,
                        output="...",
                    )
                )
    write_jsonl(run_dir / "mistakes.jsonl", mistakes)
    write_jsonl(run_dir / "feedback.jsonl", feedback)
    write_jsonl(run_dir / "rationales.jsonl", rationales)
    write_jsonl(run_dir / "reviews.jsonl", reviews)
    write_jsonl(run_dir / "decisions.jsonl", decisions)
    write_json(run_dir / "review.json", review_statistics(reviews, decisions))
    write_jsonl(run_dir / "dataset" / "train.jsonl", examples)


# Run in the page: change the search box, then wait for the next frame to be painted.
TYPE_AND_PAINT = """
const [text, done] = arguments;
const q = document.getElementById('q'), t0 = performance.now();
q.value = text;
q.dispatchEvent(new Event('input'));
requestAnimationFrame(() => setTimeout(() => done({
  ms: performance.now() - t0, filter_ms: window.mapdFilterMs,
  rows: document.querySelectorAll('tr.row').length,
  count: document.getElementById('count').textContent}), 0));
"""

OPEN_AND_PAINT = """
const done = arguments[0], t0 = performance.now();
document.querySelector('tr.row').click();
requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0), 0));
"""


def measure_page(page: Path, loads: int) -> dict[str, object]:
    """Time to interactive (median of `loads` fresh loads), search keystrokes, opening a row."""
    profile = Path(tempfile.mkdtemp(prefix="mapd-chromium-"))
    driver = headless_chromium(profile)
    try:
        driver.set_page_load_timeout(120)
        ready = []
        for _ in range(loads):
            driver.get(page.resolve().as_uri() + f"?load={len(ready)}")
            while not driver.execute_script("return window.mapdReady === true"):
                time.sleep(0.02)
            ready.append(driver.execute_script("return window.mapdReadyMs"))
        while driver.execute_script("return window.mapdSearchReadyMs === undefined"):
            time.sleep(0.02)
        search_ready = driver.execute_script("return window.mapdSearchReadyMs")
        nav = driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return {dom_content_loaded: n.domContentLoadedEventEnd, load: n.loadEventEnd};"
        )
        keystrokes = [driver.execute_async_script(TYPE_AND_PAINT, text) for text in SEARCH]
        cleared = driver.execute_async_script(TYPE_AND_PAINT, "")
        open_ms = driver.execute_async_script(OPEN_AND_PAINT)
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        RESULTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(RESULTS / "report-10k.png"))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return {
        "ready_ms_median": round(statistics.median(ready), 1),
        "ready_ms_all": [round(x, 1) for x in ready],
        "search_text_ready_ms": round(search_ready, 1),
        "navigation": {k: round(v, 1) for k, v in nav.items()},
        "search_keystrokes": [
            {
                "text": t,
                "ms": round(k["ms"], 1),
                "filter_ms": round(k["filter_ms"], 1),
                "shown": k["count"],
            }
            for t, k in zip(SEARCH, keystrokes, strict=True)
        ],
        "clear_search_ms": round(cleared["ms"], 1),
        "open_row_ms": round(open_ms, 1),
        "console_errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mistakes", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=3, help="page loads for the median")
    parser.add_argument("--keep", type=Path, help="keep the synthetic run folder here")
    args = parser.parse_args()

    run_dir = args.keep or Path(tempfile.mkdtemp(prefix="mapd-report-bench-"))
    started = time.perf_counter()
    generate_run(run_dir, args.mistakes)
    generated = time.perf_counter() - started
    started = time.perf_counter()
    page = write_report(run_dir)
    build_s = time.perf_counter() - started
    records = sum(p.stat().st_size for p in run_dir.glob("*.jsonl"))
    size = page.stat().st_size
    result: dict[str, object] = {
        "mistakes": args.mistakes,
        "teachers": len(TEACHERS),
        "report_bytes": size,
        "report_mb": round(size / 1e6, 2),
        "records_bytes": records,
        "size_ratio_to_records": round(size / records, 3),
        "bytes_per_mistake": round(size / args.mistakes),
        "generate_s": round(generated, 2),
        "build_report_s": round(build_s, 2),
    }
    if chromium_paths() is not None:
        result["browser"] = measure_page(page, args.loads)
    else:
        result["browser"] = "skipped: chromium and chromedriver not installed"
    print(json.dumps(result, indent=2))
    b = result["browser"]
    if isinstance(b, dict):
        per_1k = b["ready_ms_median"] / (args.mistakes / 1000)
        print(
            f"\n{args.mistakes:,} mistakes x {len(TEACHERS)} teachers: report {size / 1e6:.1f} MB "
            f"({size / records:.2f}x the run's JSONL records), built in {build_s:.1f} s; "
            f"interactive after {b['ready_ms_median']:.0f} ms ({per_1k:.0f} ms per 1,000 mistakes); "
            f"full-text search ready after {b['search_text_ready_ms']:.0f} ms; "
            f"search keystroke {max(k['ms'] for k in b['search_keystrokes']):.0f} ms at worst; "
            f"opening a row {b['open_row_ms']:.0f} ms"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "report_size.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

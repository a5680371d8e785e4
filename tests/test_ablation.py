"""`mapd ablate`: rows per seed on a tiny in-process student, the table's statistics and costs,
a release folder."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tests.stages.scripted_classroom import reply, write_config
from tests.stages.train.toy_run import build_tiny_model

from mapd.ablation import RowResult, render, run_ablation, table_lines
from mapd.config import load_config
from mapd.llm.ledger import run_id
from mapd.release import import_release
from mapd.stats import sign_flip_exact, wilson_interval
from mapd.testing.loopback import LoopbackServer

RELEASE = sorted((Path(__file__).parent / "fixtures" / "release").glob("*.json"))
SVAMP = Path(__file__).parent / "fixtures" / "svamp"


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-student"))


def in_process(student: Path) -> list[str]:
    """The tiny model as the in-process student, trained for one step."""
    return [
        "student.backend=transformers",
        "student.base_url=null",
        "student.weights=null",
        f"student.model={student}",
        "student.device=cpu",
        "student.sampling.max_tokens=8",
        "eval.max_tokens=8",
        "train.max_steps=1",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.max_length=256",
    ]


def read_right(path: Path) -> set[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["question_id"] for r in rows if r["correct"]}


def read_ids(path: Path) -> set[str]:
    return {json.loads(line)["question_id"] for line in path.read_text().splitlines()}


def uncached_calls(home: Path, run_dir: Path) -> dict[str, tuple[int, int]]:
    """Per stage of one run folder: (calls, calls not answered from the cache)."""
    with sqlite3.connect(home / "calls.sqlite") as db:
        rows = db.execute(
            "SELECT stage, count(*), sum(1 - cached) FROM calls WHERE run = ? GROUP BY stage",
            (run_id(run_dir, create=False),),
        ).fetchall()
    return {stage: (n, fresh) for stage, n, fresh in rows}


def test_two_seeds_share_every_call_and_report_paired_statistics(tmp_path, tiny_student, mapd_home):
    rows = ["untrained", "mapd", "committee-no-review", "single-alice"]
    with LoopbackServer(reply=reply) as server:
        config = write_config(tmp_path, server.base_url)
        overrides = [*in_process(tiny_student), "ablation.seeds=[731, 1]"]
        cfg = load_config(config, [*overrides, f"ablation.rows=[{', '.join(rows)}]"])
        root = asyncio.run(run_ablation(cfg))
        teach_calls = sum(
            "Student's answer" in r["messages"][-1]["content"] for r in server.requests
        )
        sent = len(server.requests)

        # a kill during the last row's evaluation: only that evaluation runs again
        last = root / "single-alice" / "seed-1"
        trained_at = json.loads((last / "manifests" / "train.json").read_text())["finished_at"]
        (last / "manifests" / "eval.json").unlink()
        asyncio.run(run_ablation(cfg))
        assert len(server.requests) == sent  # nothing asked of a teacher again
    assert json.loads((last / "manifests" / "train.json").read_text())["finished_at"] == trained_at
    assert (last / "manifests" / "eval.json").exists()

    # teaching was paid once for all 3 rows x 2 seeds; the second seed took every exam,
    # teaching and review call from the cache, but trained its own student
    mistakes = len((root / "mapd" / "seed-731" / "mistakes.jsonl").read_text().splitlines())
    assert teach_calls == 3 * mistakes > 0
    second = uncached_calls(mapd_home, root / "mapd" / "seed-1")
    assert second["exam"][0] > 0 and second["teach"][0] > 0 and second["review"][0] > 0
    assert all(second[s][1] == 0 for s in ("exam", "teach", "review"))
    train_fps = {
        json.loads((root / "mapd" / f"seed-{s}" / "manifests" / "train.json").read_text())[
            "fingerprint"
        ]
        for s in (731, 1)
    }
    assert len(train_fps) == 2
    assert not (root / "mapd" / "seed-731" / "eval" / "base").exists()  # measured once

    with (root / "ablation.csv").open(newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert [(r["row"], r["seed"]) for r in lines] == [
        ("untrained", ""),
        *((row, s) for row in rows[1:] for s in ("731", "1", "pooled")),
    ]
    preds = {
        (row, s): root / row / f"seed-{s}" / "eval" / "trained" / "predictions.jsonl"
        for row in rows[1:]
        for s in (731, 1)
    }
    preds[("untrained", 731)] = preds[("untrained", 1)] = (
        root / "untrained" / "eval" / "base" / "predictions.jsonl"
    )
    n = len(read_ids(preds[("mapd", 731)]))
    for line in lines:
        seeds = [731, 1] if line["seed"] in ("pooled", "") else [int(line["seed"])]
        own = [731] if line["row"] == "untrained" else seeds
        correct = sum(len(read_right(preds[(line["row"], s)])) for s in own)
        assert (int(line["correct"]), int(line["n"])) == (correct, n * len(own))
        low, high = wilson_interval(correct, n * len(own))
        assert (float(line["ci_low"]), float(line["ci_high"])) == (round(low, 4), round(high, 4))
        if line["row"] == "mapd":
            assert line["only_baseline"] == line["baseline"] == ""
            stats = json.loads((root / "mapd" / "seed-731" / "dataset" / "stats.json").read_text())
            assert int(line["mistakes_covered"]) == stats["mistakes_used"] > 0
            assert int(line["teacher_calls"]) > 0 and int(line["teacher_tokens"]) > 0
            continue
        assert line["baseline"] == "mapd"
        both = only_this = only_mapd = 0
        # the question is the unit: per question, the seeds this row is right minus MAPD's
        # (the untrained student's one answer stands beside each MAPD seed)
        differences = dict.fromkeys(read_ids(preds[("mapd", 731)]), 0)
        for s in seeds:
            this, mapd = read_right(preds[(line["row"], s)]), read_right(preds[("mapd", s)])
            both += len(this & mapd)
            only_this += len(this - mapd)
            only_mapd += len(mapd - this)
            for q in this:
                differences[q] += 1
            for q in mapd:
                differences[q] -= 1
        assert (int(line["both_right"]), int(line["only_this"]), int(line["only_baseline"])) == (
            both,
            only_this,
            only_mapd,
        )
        assert float(line["p_value"]) == round(sign_flip_exact(differences.values()), 6)
        headline = line["row"] == "untrained" or line["seed"] == "pooled"
        assert (line["p_holm"] != "") == headline
    untrained = next(line for line in lines if line["row"] == "untrained")
    assert untrained["teacher_calls"] == untrained["mistakes_covered"] == ""
    md = (root / "ablation.md").read_text()
    assert "## What the data supports" in md
    assert f"on {n} questions × 2 seeds" in md
    assert "| teacher calls | teacher tokens (estimated) | mistakes covered |" in md
    for description in ("untrained student", "committee without review", "single teacher alice"):
        assert f"- committee with peer review (MAPD) vs {description}" in md


def _right(n: int, ids: list[int]) -> dict[str, bool]:
    return {f"q{i}": i in ids for i in range(1, n + 1)}


def _synthetic_rows() -> list[RowResult]:
    mapd = RowResult(
        "mapd", "MAPD", {731: _right(10, [1, 2, 3, 4, 5, 6]), 1: _right(10, [1, 2, 3, 4, 5])}
    )
    mapd.examples = {731: (6, 3), 1: (6, 3)}
    same = {"teacher_calls": 48, "teacher_tokens": 12345, "mistakes_covered": 5}
    mapd.cost = {731: same, 1: dict(same)}
    other = RowResult(
        "other", "one teacher", {731: _right(10, [1, 2, 7, 8]), 1: _right(10, [1, 7, 8, 9])}
    )
    other.examples = {731: (4, 2), 1: (4, 2)}
    other.cost = {731: {"teacher_calls": 8, "mistakes_covered": 4}, 1: {"mistakes_covered": 3}}
    base = RowResult("untrained", "untrained student", {None: _right(10, [1])})
    return [base, mapd, other]


def test_pooled_test_takes_the_question_as_the_unit_and_pairs_each_seed_with_its_own():
    lines = table_lines(_synthetic_rows())
    by = {(x["row"], x["seed"]): x for x in lines}
    counts = lambda x: (x["both_right"], x["only_this"], x["only_baseline"])  # noqa: E731
    assert counts(by[("other", 731)]) == (2, 2, 4)
    assert counts(by[("other", 1)]) == (1, 3, 4)
    assert counts(by[("other", "pooled")]) == (3, 5, 8)  # seed × question pairs
    # d over q1..q10 = 0,-1,-2,-2,-2,-1,2,2,1,0: sum -3 of 13; the sums of the 256 sign flips
    # are odd, 80 of them ±1, so p = 176/256 (pooled McNemar on 5 vs 8 said 0.58)
    assert by[("other", "pooled")]["p_value"] == 0.6875
    assert by[("other", 731)]["p_value"] == 0.6875  # one seed: McNemar's 2 vs 4
    assert (by[("other", "pooled")]["correct"], by[("other", "pooled")]["n"]) == (8, 20)
    # the untrained student answered once: its answer stands beside both MAPD seeds, but each
    # question counts once (d = 2·u - b_731 - b_1: 0, then -2 on q2..q5 and -1 on q6)
    assert (by[("untrained", "")]["correct"], by[("untrained", "")]["n"]) == (1, 10)
    assert counts(by[("untrained", "")]) == (2, 0, 9)
    assert by[("untrained", "")]["p_value"] == 2 / 2**5
    # Holm over the two headline lines: 0.0625 · 2, then max(0.125, 0.6875 · 1)
    assert by[("untrained", "")]["p_holm"] == 0.125
    assert by[("other", "pooled")]["p_holm"] == 0.6875
    assert "p_holm" not in by[("other", 731)] and "p_value" not in by[("mapd", "pooled")]
    md, csv_text = render(lines)
    assert (
        "- MAPD vs untrained student: 55.0 % vs 10.0 %, 9 vs 0 discordant, p = 0.06, "
        "Holm p = 0.12: no significant difference on 10 questions × 2 seeds." in md
    )
    assert (
        "- MAPD vs one teacher: 55.0 % vs 40.0 %, 8 vs 5 discordant, p = 0.69, Holm p = 0.69: "
        "no significant difference on 10 questions × 2 seeds." in md
    )
    assert "question as the unit" in md and "Holm p adjusts" in md
    assert "a pooled interval counts seed × question pairs as independent" in md
    assert (
        "| one teacher | 731 | 40.0 % (16.8–68.7) | 4 / 10 | 2 | 2 | 4 | 0.69 | - | 4 | 8 | - | 4 |"
        in md
    )
    header = csv_text.splitlines()[0].split(",")
    assert header[:9] == [
        "row",
        "description",
        "seed",
        "correct",
        "n",
        "accuracy",
        "ci_low",
        "ci_high",
        "baseline",
    ]
    assert header[9:] == [
        "both_right",
        "only_this",
        "only_baseline",
        "p_value",
        "p_holm",
        "examples",
        "rationale_examples",
        "teacher_calls",
        "teacher_tokens",
        "mistakes_covered",
    ]


def test_cost_columns_per_seed_and_on_a_pooled_line_only_when_the_seeds_agree():
    lines = table_lines(_synthetic_rows())
    by = {(x["row"], x["seed"]): x for x in lines}
    cost = lambda x: [x.get(k) for k in ("teacher_calls", "teacher_tokens", "mistakes_covered")]  # noqa: E731
    assert cost(by[("mapd", 731)]) == cost(by[("mapd", "pooled")]) == [48, 12345, 5]
    assert cost(by[("other", 1)]) == [None, None, 3]  # its records were not all there
    assert cost(by[("other", "pooled")]) == [None, None, None]  # the seeds differ
    assert cost(by[("untrained", "")]) == [None, None, None]
    md, csv_text = render(lines)
    assert "| teacher calls | teacher tokens (estimated) | mistakes covered |" in md
    assert (
        "| MAPD | pooled | 55.0 % (34.2–74.2) | 11 / 20 | - | - | - | - | - |  | 48 | 12,345 | 5 |"
        in md
    )
    table = {(r["row"], r["seed"]): r for r in csv.DictReader(io.StringIO(csv_text))}
    assert table[("mapd", "731")]["teacher_tokens"] == "12345"
    assert table[("untrained", "")]["teacher_calls"] == ""


def test_a_question_right_in_both_seeds_counts_once_in_the_pooled_line():
    # one teacher beats MAPD on q1 and q2 in both seeds: 4 discordant pairs but 2 questions
    mapd = RowResult("mapd", "MAPD", {731: _right(6, [3]), 1: _right(6, [3])})
    other = RowResult("other", "one teacher", {731: _right(6, [1, 2, 3]), 1: _right(6, [1, 2, 3])})
    mapd.examples = other.examples = {731: (1, 1), 1: (1, 1)}
    pooled = table_lines([mapd, other])[-1]
    assert (pooled["seed"], pooled["only_this"], pooled["only_baseline"]) == ("pooled", 4, 0)
    assert pooled["p_value"] == 0.5  # pooled McNemar over the 4 pairs gave 2/16 = 0.125


def test_the_baseline_row_is_named_and_described_in_every_comparison():
    check = RowResult("mapd-answer-check", "MAPD with the answer check", {731: _right(8, [1, 2])})
    cascade = RowResult(
        "cascade", "cascade committee with the answer check", {731: _right(8, [1, 2, 3, 4])}
    )
    mapd = RowResult("mapd", "committee with peer review (MAPD)", {731: _right(8, [1])})
    for row in (check, cascade, mapd):
        row.examples = {731: (2, 1)}
    lines = table_lines([mapd, check, cascade], baseline="mapd-answer-check")
    by = {x["row"]: x for x in lines}
    assert "baseline" not in by["mapd-answer-check"]
    assert by["cascade"]["baseline"] == by["mapd"]["baseline"] == "mapd-answer-check"
    assert (by["cascade"]["only_this"], by["cascade"]["only_baseline"]) == (2, 0)
    md, csv_text = render(lines)
    assert "Each row against the baseline, MAPD with the answer check (`ablation.baseline`)" in md
    assert (
        "- MAPD with the answer check vs cascade committee with the answer check: 25.0 % vs "
        "50.0 %, 0 vs 2 discordant, p = 0.50, Holm p = 1.00: no significant difference on "
        "8 questions." in md
    )
    assert ",mapd-answer-check,2,2,0,0.5,1.0," in csv_text.splitlines()[-1]


def test_significance_is_read_from_the_holm_adjusted_p():
    n = 12
    mapd = RowResult("mapd", "MAPD", {731: _right(n, [])})
    strong = RowResult("strong", "eight better", {731: _right(n, list(range(1, 9)))})  # p = 2/2^8
    weak = RowResult("weak", "six better", {731: _right(n, list(range(1, 7)))})  # p = 2/2^6
    alike = RowResult("alike", "the same", {731: _right(n, [])})  # p = 1
    for row in (mapd, strong, weak, alike):
        row.examples = {731: (1, 1)}
    by = {x["row"]: x for x in table_lines([mapd, strong, weak, alike])}
    # sorted 0.0078, 0.031, 1 times 3, 2, 1
    assert by["strong"]["p_holm"] == pytest.approx(3 * 2 / 2**8, abs=1e-6)
    assert by["weak"]["p_value"] == pytest.approx(2 / 2**6, abs=1e-6)  # under 0.05
    assert by["weak"]["p_holm"] == pytest.approx(2 * 2 / 2**6, abs=1e-6)
    assert by["alike"]["p_holm"] == 1.0
    md, _ = render(list(by.values()))
    assert (
        "- MAPD vs eight better: 0.0 % vs 66.7 %, 0 vs 8 discordant, p = 0.008, Holm p = 0.02: "
        "eight better is better at the 5 % level after Holm's adjustment, on 12 questions." in md
    )
    assert (
        "- MAPD vs six better: 0.0 % vs 50.0 %, 0 vs 6 discordant, p = 0.03, Holm p = 0.06: "
        "no significant difference on 12 questions." in md
    )


def test_ablation_of_an_imported_release_shares_its_teacher_data(tmp_path, tiny_student):
    out = tmp_path / "release"
    import_release("svamp", RELEASE, out)
    overrides = [
        *in_process(tiny_student),
        "task.source=local",
        f"task.path={SVAMP}",
        "task.files.test=SVAMP.json",
        "eval.limit=2",
        "ablation.rows=[untrained, mapd, committee-no-review, mapd-pick-all]",
        "ablation.variants={mapd-pick-all: [dataset.pick=all]}",
    ]
    # the preset's teachers are hosted APIs without keys here: any call would fail the run
    root = asyncio.run(run_ablation(load_config(out / "config.yaml", overrides)))
    for row in ("mapd", "committee-no-review"):
        folder = root / row / "seed-731"
        assert (folder / "mistakes.jsonl").read_text() == (out / "mistakes.jsonl").read_text()
        assert (folder / "reviews.jsonl").read_text() == (out / "reviews.jsonl").read_text()
        assert json.loads((folder / "manifests" / "teach.json").read_text())["imported"]
    stats = {
        row: json.loads((root / row / "seed-731" / "dataset" / "stats.json").read_text())
        for row in ("mapd", "committee-no-review", "mapd-pick-all")
    }
    # the imported reviews reject every rationale of one mistake; without review none is
    assert stats["mapd"]["rationale_examples"] == 3
    assert stats["committee-no-review"]["rationale_examples"] == 4
    # the variant keeps every accepted rationale and every feedback, not one per mistake
    assert stats["mapd-pick-all"]["rationale_examples"] > stats["mapd"]["rationale_examples"]
    assert stats["mapd-pick-all"]["feedback_examples"] > stats["mapd"]["feedback_examples"]
    with (root / "ablation.csv").open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["row"] for r in table] == [
        "untrained",
        "mapd",
        "committee-no-review",
        "mapd-pick-all",
    ]
    assert table[-1]["description"] == "MAPD with dataset.pick=all"
    assert table[-1]["both_right"] != ""  # compared with MAPD like the paper's rows
    # each row's cost, replayed from the imported records: without review no review calls
    cost = {r["row"]: r for r in table}
    for row in ("mapd", "committee-no-review", "mapd-pick-all"):
        assert int(cost[row]["mistakes_covered"]) == stats[row]["mistakes_used"] > 0
        assert int(cost[row]["teacher_tokens"]) > int(cost[row]["teacher_calls"]) > 0
    assert int(cost["committee-no-review"]["teacher_calls"]) < int(cost["mapd"]["teacher_calls"])
    assert cost["untrained"]["teacher_calls"] == ""


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--rows", "mapd,nope"], "unknown ablation row 'nope'"),
        (["--seeds", "731,one"], "--seeds '731,one': not whole numbers"),
        (["--seeds", "1,1"], "seeds: 1 is given twice"),
        (["ablation.variants={mapd: [train.alpha=0.1]}"], "'mapd' is already a row"),
        (["ablation.variants={pick-all: [dataset.pik=all]}"], "dataset.pik"),
        (["ablation.baseline=nope"], "unknown ablation baseline 'nope'"),
        (["ablation.variants={pick-all: [dataset.pick]}"], "a list of KEY=VALUE settings"),
    ],
)
def test_bad_rows_and_seeds_are_one_line_errors(tmp_path, option, needle):
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    result = subprocess.run(
        [sys.executable, "-m", "mapd", "ablate", str(config), *option],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "ablation").exists()


def test_every_row_is_evaluated_from_its_own_student_not_one_served_adapter(tmp_path):
    """A server named by eval.trained serves one adapter: rows trained apart must not be asked
    it, or every row would report that one student's accuracy."""
    from mapd.ablation import variant_config

    cfg = load_config(
        write_config(tmp_path, "http://127.0.0.1:9/v1"),
        ["eval.trained.model=student", "eval.trained.base_url=http://127.0.0.1:9/v1"],
    )
    row = variant_config(cfg, tmp_path / "ablation", "mapd-alpha0", [(["train", "alpha"], 0.0)], 1)
    assert row.eval.trained is None and row.train.alpha == 0.0


def test_a_cascade_config_still_gives_the_papers_rows_and_a_cascade_row(tmp_path):
    """The paper's rows run the full committee whatever the config's committee.mode; the
    cascade row keeps the config's order."""
    from mapd.ablation import row_configs
    from mapd.config import validate_config

    cfg = validate_config(
        {
            "name": "c",
            "output_dir": str(tmp_path),
            "task": {"name": "gsm8k"},
            "student": {"model": "s"},
            "teachers": [
                {"name": "a", "model": "a", "base_url": "http://127.0.0.1:9/v1"},
                {"name": "b", "model": "b", "base_url": "http://127.0.0.1:9/v1"},
            ],
            "committee": {"mode": "cascade", "order": ["b", "a"]},
        }
    )
    rows = row_configs(cfg)
    assert rows["mapd", cfg.seed].committee.mode == "full"
    # and a full-committee config whose settings the cascade cannot take still validates
    data = cfg.model_dump(mode="json")
    data["committee"] = {"mode": "full"}
    data["review"]["reviewers"] = 1
    assert row_configs(validate_config(data))["cascade", cfg.seed].review.reviewers is None
    cascade = rows["cascade", cfg.seed]
    assert cascade.committee.mode == "cascade" and cascade.committee.order == ["b", "a"]

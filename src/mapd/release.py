"""`mapd import-release`: load the paper's released JSON files into a run folder.

The release (MIT, see arXiv 2410.03663) ships, per task, the student's mistakes
(`*_false_round0.json`), each teacher's feedback (`*_feedback_round0.json`) and each
teacher's rationale with the two peer-review scores it received
(`*_rationale_round0.json`, `"gpt_rationale": [text, score, score]`). The scores of a
rationale are taken to be from the other two teachers in the release's teacher order
(gpt, gemini, mistral); the release does not name the reviewer of each score.

The import writes the files our exam, teach and review stages would have written, marks
those stages as imported (they are never re-run, as there is nobody to call), and writes
`config.yaml` with the paper preset, so that `mapd build RUN_DIR/config.yaml` and
`mapd train RUN_DIR/config.yaml` run on the paper's real teacher output. Decisions are
recomputed by the review stage from the imported scores with the config's review rules.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from mapd.answers import answers_match, extract_answer, normalize_gold
from mapd.config import RunConfig, load_config, preset_path
from mapd.errors import MapdError
from mapd.records import AnswerType, Feedback, Mistake, Rationale, Review
from mapd.rundir import (
    RELEASE_MARKER,
    load_manifest,
    read_json,
    write_json,
    write_jsonl,
    write_text_atomic,
)

TEACHERS = {"gpt": "gpt-3.5-turbo", "gemini": "gemini-1.0-pro", "mistral": "mixtral-8x7b"}
ANSWER_TYPES: dict[str, AnswerType] = {"svamp": "number", "gsm8k": "number", "strategyqa": "yesno"}


def _load(path: Path) -> list[dict[str, Any]]:
    data = read_json(path, fix="pass the release's *_round0.json files")
    if not isinstance(data, list) or not all(isinstance(x, dict) and "id" in x for x in data):
        raise MapdError(
            f"{path}: expected a list of objects with an `id`", "is this a release file?"
        )
    return data


def _gold(raw: str, answer_type: AnswerType) -> str:
    # StrategyQA's release packs the facts after the verdict: "false.\tPer capita, ..."
    head = raw.split("\t", 1)[0].strip().rstrip(".") if answer_type == "yesno" else raw
    return normalize_gold(head, answer_type)


def _mistake(task: str, item: dict[str, Any], answer_type: AnswerType) -> Mistake:
    try:
        return Mistake(
            question_id=f"{task}-release-{item['id']}",
            question=item["question"],
            answer=_gold(str(item["gold_answer"]), answer_type),
            answer_type=answer_type,
            student_output=item["student_wrong_pred"],
            student_answer=item.get("student_wrong_final_answer"),
        )
    except KeyError as exc:
        raise MapdError(
            f"release item {item.get('id')}: missing field {exc}", "is this a release file?"
        ) from None


def import_release(task: str, files: list[Path], out: Path) -> dict[str, Any]:
    """Write mistakes, feedback, rationales and reviews from release files into run folder `out`."""
    if task not in ANSWER_TYPES:
        raise MapdError(f"no release import for task {task!r}", f"tasks: {', '.join(ANSWER_TYPES)}")
    answer_type = ANSWER_TYPES[task]
    items: dict[str, dict[str, Any]] = {}
    for path in files:
        for item in _load(path):
            items.setdefault(str(item["id"]), {}).update(item)
    if not items:
        raise MapdError("the release files hold no items", "pass non-empty *_round0.json files")

    mistakes, feedback, rationales, reviews = [], [], [], []
    for item in items.values():
        try:
            m, its_feedback, its_rationales, its_reviews = _records(task, item, answer_type)
        except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            raise MapdError(
                f"release item {item.get('id')} (task {task}): {str(exc).splitlines()[0]}",
                "pass the release's *_round0.json files of this task, unchanged",
            ) from None
        mistakes.append(m)
        feedback += its_feedback
        rationales += its_rationales
        reviews += its_reviews

    cfg = load_config(preset_path(f"paper/{task}"), [f"output_dir={out}"])
    write_release_run(cfg, out, mistakes, feedback, rationales, reviews, [p.name for p in files])
    return {
        "mistakes": len(mistakes),
        "feedback": len(feedback),
        "rationales": len(rationales),
        "reviews": len(reviews),
    }


def _records(
    task: str, item: dict[str, Any], answer_type: AnswerType
) -> tuple[Mistake, list[Feedback], list[Rationale], list[Review]]:
    """One release item's mistake, and each teacher's feedback, rationale and reviews of it."""
    m = _mistake(task, item, answer_type)
    feedback, rationales, reviews = [], [], []
    order = list(TEACHERS)
    for key, teacher in TEACHERS.items():
        if f"{key}_feedback" in item:
            feedback.append(
                Feedback(
                    id=f"{m.question_id}|{teacher}",
                    question_id=m.question_id,
                    teacher=teacher,
                    text=item[f"{key}_feedback"] or "",
                )
            )
        if f"{key}_rationale" not in item:
            continue
        entry = item[f"{key}_rationale"]
        if not isinstance(entry, list) or not entry:
            raise ValueError(f"{key}_rationale is not a list [text, score, score]")
        text, *scores = entry
        pred = extract_answer(text or "", answer_type)
        r = Rationale(
            id=f"{m.question_id}|{teacher}",
            question_id=m.question_id,
            teacher=teacher,
            text=text or "",
            extracted=pred,
            correct=answers_match(pred, m.answer, answer_type),
        )
        rationales.append(r)
        reviewers = [TEACHERS[k] for k in order if k != key]
        for reviewer, score in zip(reviewers, scores, strict=False):
            valid = isinstance(score, int | float) and 1 <= score <= 5
            reviews.append(
                Review(
                    id=f"{r.id}|{reviewer}",
                    rationale_id=r.id,
                    question_id=m.question_id,
                    author=teacher,
                    reviewer=reviewer,
                    score=float(score) if valid else None,
                    raw=json.dumps(score),
                )
            )
    return m, feedback, rationales, reviews


def write_release_run(
    cfg: RunConfig,
    out: Path,
    mistakes: list[Mistake],
    feedback: list[Feedback],
    rationales: list[Rationale],
    reviews: list[Review],
    sources: list[str],
) -> None:
    from mapd.config import dump_run_config
    from mapd.rundir import manifest_path

    written = {"exam": (["mistakes.jsonl"], {"mistakes": len(mistakes)})}
    write_jsonl(out / "mistakes.jsonl", mistakes)
    if feedback or rationales:
        write_jsonl(out / "feedback.jsonl", feedback)
        write_jsonl(out / "rationales.jsonl", rationales)
        counts = {"feedback": len(feedback), "rationales": len(rationales)}
        written["teach"] = (["feedback.jsonl", "rationales.jsonl"], counts)
    if reviews:
        write_jsonl(out / "reviews.jsonl", reviews)
    write_text_atomic(out / "config.yaml", dump_run_config(cfg))
    now = time.time()
    for stage, (outputs, counts) in written.items():
        write_json(
            manifest_path(out, stage),
            {
                "stage": stage,
                "imported": True,
                "sources": sources,
                "finished_at": now,
                "outputs": {},
                "summary": {"imported_files": outputs, **counts},
            },
        )
    write_json(
        out / RELEASE_MARKER, {"sources": sources, "reviews": len(reviews), "imported_at": now}
    )


def share_imported(source: Path, dest: Path) -> bool:
    """Copy the imported stages of run folder `source` (files and manifests) into `dest`.

    `dest` then builds, trains and evaluates on the same imported mistakes, feedback,
    rationales and reviews. False, and nothing copied, when `source` holds no import."""
    if not (source / RELEASE_MARKER).exists():
        return False
    names = [RELEASE_MARKER, "reviews.jsonl"]
    for stage in ("exam", "teach"):
        manifest = load_manifest(source, stage)
        if manifest and manifest.get("imported"):
            names += [f"manifests/{stage}.json", *manifest["summary"]["imported_files"]]
    for name in names:
        if (source / name).exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, dest / name)
    return True

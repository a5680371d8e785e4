"""Stage `build`: turn mistakes, feedback and accepted rationales into the training set.

Reads  mistakes.jsonl, feedback.jsonl, rationales.jsonl, decisions.jsonl
Writes dataset/train.jsonl (one Example a line), dataset/hf/ (a `datasets` dataset),
       dataset/trl.jsonl (TRL prompt-completion), dataset/alpaca.json and
       dataset/dataset_info.json (LLaMA-Factory), dataset/stats.json

Per mistake: feedback-task examples (the prompt shows the question, the student's answer
and the correct answer as a hint; the target is a teacher's feedback) and rationale-task
examples (the prompt is the question alone; the target is an accepted rationale). A mistake
with no accepted rationale is dropped. Feedback is not peer-reviewed; with
`dataset.feedback_from: accepted` (the default) only the feedback of teachers whose own
rationale for the question was accepted is trained, so a teacher whose rationale was
rejected (by the review or, when on, the answer check) does not explain the mistake either
(`any`, the paper: every teacher's feedback is a candidate).
`dataset.pick: random` takes one of each at random, seeded per question (train.seed, else the
run's seed) so that the choice does not depend on file order; `all` takes every one. Feedback
or a rationale cut off at max_tokens is never trained (stats: `not_trained`, "cut off at
max_tokens").
"""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from mapd.answers import answer_line, ends_with_answer_line
from mapd.config import RunConfig
from mapd.errors import MapdError
from mapd.prompts import Prompts
from mapd.records import Decision, Example, Feedback, Mistake, Rationale
from mapd.rundir import read_jsonl, write_json, write_jsonl

NAME = "build"
INPUTS = ["mistakes.jsonl", "feedback.jsonl", "rationales.jsonl", "decisions.jsonl"]
OUTPUTS = ["dataset/train.jsonl", "dataset/trl.jsonl", "dataset/alpaca.json", "dataset/stats.json"]
ALWAYS_RUNS = False


def settings(cfg: RunConfig) -> dict[str, Any]:
    return {"dataset": cfg.dataset.model_dump(), "seed": cfg.training_seed, "prompts": cfg.prompts}


def with_answer_line(text: str, mistake: Mistake) -> str:
    if ends_with_answer_line(text, mistake.answer, mistake.answer_type):
        return text
    return f"{text.rstrip()}\n\n{answer_line(mistake.answer, mistake.answer_type)}"


def build_examples(
    cfg: RunConfig,
    mistakes: list[Mistake],
    feedback: list[Feedback],
    rationales: list[Rationale],
    decisions: list[Decision],
) -> tuple[list[Example], dict[str, Any]]:
    """The training examples and the counts of what was kept and dropped."""
    prompts = Prompts(cfg.prompts)
    only = cfg.dataset.teacher if cfg.dataset.mode == "single_teacher" else None
    accepted = {d.rationale_id for d in decisions if d.accepted}
    # the cascade asks for feedback only the teacher whose rationale was accepted; an imported
    # release, replayed, holds every teacher's (feedback and rationale ids are "question|teacher")
    cascade = cfg.committee.mode == "cascade"
    feedback_by_q: dict[str, list[Feedback]] = {}
    counts: Counter[str] = Counter()
    for f in feedback:
        if only is not None and f.teacher != only:
            continue
        if cascade and f.id not in accepted:
            counts["feedback_not_asked"] += 1
            continue
        if f.cut_off:
            counts["feedback_cut_off"] += 1
        else:
            feedback_by_q.setdefault(f.question_id, []).append(f)
    rationales_by_q: dict[str, list[Rationale]] = {}
    for r in rationales:
        if r.id in accepted and (only is None or r.teacher == only):
            rationales_by_q.setdefault(r.question_id, []).append(r)

    examples: list[Example] = []
    for m in mistakes:
        fb = sorted(feedback_by_q.get(m.question_id, []), key=lambda f: f.teacher)
        rats = sorted(rationales_by_q.get(m.question_id, []), key=lambda r: r.teacher)
        if not rats:
            counts["dropped_no_accepted_rationale"] += 1
            continue
        usable = fb
        if cfg.dataset.feedback_from == "accepted":
            solved = {r.teacher for r in rats}
            usable = [f for f in fb if f.teacher in solved]
            counts["feedback_of_rejected_teachers"] += len(fb) - len(usable)
        if cfg.dataset.pick == "random":
            rng = random.Random(f"{cfg.training_seed}:{m.question_id}")
            # the first draw over every teacher's feedback keeps the rationale draw after it
            # the same whichever feedback is usable: the two settings differ in feedback only
            drawn = rng.choice(fb) if fb else None
            rats = [rng.choice(rats)]
            if cfg.dataset.feedback_from == "accepted":
                feedback_rng = random.Random(f"{cfg.training_seed}:{m.question_id}:feedback")
                drawn = feedback_rng.choice(usable) if usable else None
            usable = [drawn] if drawn else []
        counts["mistakes_without_feedback"] += not usable
        fb = usable
        counts["mistakes_used"] += 1
        fb_prompt = prompts.feedback(m)
        for f in fb:
            examples.append(
                Example(
                    id=f"{f.id}:feedback",
                    kind="feedback",
                    question_id=m.question_id,
                    teacher=f.teacher,
                    instruction=fb_prompt.instruction,
                    input=fb_prompt.input,
                    output=f.text.strip(),
                )
            )
        r_prompt = prompts.rationale(m.question, m.options, m.answer_type)
        for r in rats:
            target = (
                # a rationale whose own answer is wrong (kept without the answer check) gets
                # no gold answer line: the line would contradict the reasoning above it
                with_answer_line(r.text.strip(), m)
                if cfg.dataset.answer_line and r.correct
                else r.text.strip()
            )
            counts["answer_lines_added"] += target != r.text.strip()
            examples.append(
                Example(
                    id=f"{r.id}:rationale",
                    kind="rationale",
                    question_id=m.question_id,
                    teacher=r.teacher,
                    instruction=r_prompt.instruction,
                    input=r_prompt.input,
                    output=target,
                )
            )
    kinds = Counter(e.kind for e in examples)
    stats = {
        "mistakes": len(mistakes),
        "mistakes_used": counts["mistakes_used"],
        "dropped_no_accepted_rationale": counts["dropped_no_accepted_rationale"],
        "feedback_examples": kinds["feedback"],
        "rationale_examples": kinds["rationale"],
        "answer_lines_added": counts["answer_lines_added"],
        # with feedback_from: accepted, candidates left out because the teacher's own
        # rationale for the question was not accepted; and mistakes trained on rationales only
        "feedback_of_rejected_teachers": counts["feedback_of_rejected_teachers"],
        "mistakes_without_feedback": counts["mistakes_without_feedback"],
        "not_trained": {
            "cut off at max_tokens": {
                "feedback": counts["feedback_cut_off"],
                "rationale": sum(r.cut_off for r in rationales if only in (None, r.teacher)),
            }
        },
        "rationale_examples_per_teacher": dict(
            sorted(Counter(e.teacher for e in examples if e.kind == "rationale").items())
        ),
        "mode": cfg.dataset.mode,
        "pick": cfg.dataset.pick,
    }
    if counts["feedback_not_asked"]:
        stats["feedback_not_asked"] = counts["feedback_not_asked"]
    return examples, stats


def export(examples: list[Example], out: Path) -> None:
    """Write the training set in our format and in TRL's, LLaMA-Factory's and `datasets`' formats."""
    write_jsonl(out / "train.jsonl", examples)
    write_jsonl(
        out / "trl.jsonl",
        (
            {
                "prompt": [{"role": "user", "content": e.prompt_text()}],
                "completion": [{"role": "assistant", "content": e.output}],
                "kind": e.kind,
            }
            for e in examples
        ),
    )
    write_json(
        out / "alpaca.json",
        [
            {"instruction": e.instruction, "input": e.input, "output": e.output, "kind": e.kind}
            for e in examples
        ],
    )
    write_json(
        out / "dataset_info.json",
        {
            "mapd": {
                "file_name": "alpaca.json",
                "columns": {"prompt": "instruction", "query": "input", "response": "output"},
            }
        },
    )
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    # save beside, then swap in: a kill leaves the old dataset or the new one, never half of one
    tmp, old = out / ".hf.tmp", out / ".hf.old"
    shutil.rmtree(tmp, ignore_errors=True)
    Dataset.from_list([e.model_dump() for e in examples]).save_to_disk(str(tmp))
    if (out / "hf").exists():
        os.replace(out / "hf", old)
    os.replace(tmp, out / "hf")
    shutil.rmtree(old, ignore_errors=True)


# What to look at when no rationale was accepted, by the most common reason
NOTHING_ACCEPTED_HINTS = {
    "no_valid_review": "read the reviewers' replies in reviews.jsonl: a reply without a score "
    "in [brackets] is an invalid review; check prompts.review and the teachers' models and "
    "max_tokens",
    "low_score": "the reviewers scored them at or below review.threshold: read reviews.jsonl "
    "for why, or lower review.threshold",
    "wrong_answer": "their final answers differ from the gold ones: compare `extracted` in "
    "rationales.jsonl with `answer` in mistakes.jsonl (a wrong task.answer_type, or gold answers "
    "in another form?), or set review.require_correct_answer: false",
    "cut_off": "the teachers' replies stopped at their max_tokens: raise the teachers' "
    "sampling.max_tokens",
}


def run(cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    mistakes = read_jsonl(run_dir / "mistakes.jsonl", Mistake)
    feedback = read_jsonl(run_dir / "feedback.jsonl", Feedback)
    rationales = read_jsonl(run_dir / "rationales.jsonl", Rationale)
    decisions = read_jsonl(run_dir / "decisions.jsonl", Decision)
    examples, stats = build_examples(cfg, mistakes, feedback, rationales, decisions)
    if mistakes and not examples:
        reasons = Counter(d.reason for d in decisions)
        rejected = Counter(d.reason for d in decisions if not d.accepted)
        first = rejected.most_common(1)[0][0] if rejected else "no_valid_review"
        raise MapdError(
            f"build: none of the {len(decisions)} rationales was accepted "
            f"({', '.join(f'{r} {n}' for r, n in reasons.most_common())}): nothing to train on",
            NOTHING_ACCEPTED_HINTS.get(first, NOTHING_ACCEPTED_HINTS["no_valid_review"]),
        )
    export(examples, run_dir / "dataset")
    write_json(run_dir / "dataset" / "stats.json", stats)
    return stats

"""`build_examples`: whose feedback is trained (`dataset.feedback_from`) and what is counted."""

from __future__ import annotations

from mapd.config import load_config, preset_path
from mapd.records import Decision, Feedback, Mistake, Rationale
from mapd.stages.build import build_examples

TEACHERS = ("ann", "ben", "cal")


def config(**dataset: str):
    overrides = [f"dataset.{k}={v}" for k, v in dataset.items()]
    return load_config(preset_path("paper/svamp"), overrides)


def classroom(n: int, rejected: set[tuple[int, str]], feedback_of=TEACHERS):
    """n mistakes; every teacher writes a rationale, the ones in `rejected` are not accepted;
    the teachers in `feedback_of` write feedback."""
    mistakes = [
        Mistake(
            question_id=f"q{i}",
            question=f"What is {i} + 1?",
            answer=str(i + 1),
            answer_type="number",
            student_output=f"{i} + 1 = {i}",
            student_answer=str(i),
        )
        for i in range(n)
    ]
    feedback = [
        Feedback(id=f"q{i}|{t}", question_id=f"q{i}", teacher=t, text=f"{t} explains q{i}")
        for i in range(n)
        for t in feedback_of
    ]
    rationales = [
        Rationale(
            id=f"q{i}|{t}",
            question_id=f"q{i}",
            teacher=t,
            text=f"{t} solves q{i}. The answer is {i + 1}.",
            extracted=str(i + 1),
            correct=True,
        )
        for i in range(n)
        for t in TEACHERS
    ]
    decisions = [
        Decision(
            rationale_id=r.id,
            question_id=r.question_id,
            teacher=r.teacher,
            accepted=(int(r.question_id[1:]), r.teacher) not in rejected,
            reason="low_score" if (int(r.question_id[1:]), r.teacher) in rejected else "accepted",
            answer_correct=True,
        )
        for r in rationales
    ]
    return mistakes, feedback, rationales, decisions


def by_kind(examples, kind: str) -> dict[str, str]:
    return {e.question_id: e.teacher for e in examples if e.kind == kind}


def test_only_teachers_whose_rationale_was_accepted_give_the_trained_feedback():
    rejected = {(i, "cal") for i in range(0, 60, 2)}  # cal's rationale fails on even questions
    data = classroom(60, rejected)
    anyone, stats_any = build_examples(config(feedback_from="any"), *data)
    accepted, stats = build_examples(config(feedback_from="accepted"), *data)

    assert any(by_kind(anyone, "feedback")[f"q{i}"] == "cal" for i, _ in rejected)
    assert not any(by_kind(accepted, "feedback")[f"q{i}"] == "cal" for i, _ in rejected)
    assert "cal" in by_kind(accepted, "feedback").values()  # where cal's rationale passed
    assert stats["feedback_of_rejected_teachers"] == len(rejected)
    assert stats_any["feedback_of_rejected_teachers"] == 0
    # the rationale drawn for each mistake does not depend on whose feedback is usable
    assert by_kind(accepted, "rationale") == by_kind(anyone, "rationale")


def test_a_mistake_whose_accepted_teachers_gave_no_feedback_keeps_its_rationale():
    # only ann's rationale passes, and only ben and cal wrote feedback
    rejected = {(0, "ben"), (0, "cal")}
    data = classroom(1, rejected, feedback_of=("ben", "cal"))
    for pick in ("random", "all"):
        examples, stats = build_examples(config(feedback_from="accepted", pick=pick), *data)
        assert [(e.kind, e.teacher) for e in examples] == [("rationale", "ann")]
        assert stats["mistakes_without_feedback"] == 1
        assert stats["feedback_of_rejected_teachers"] == 2

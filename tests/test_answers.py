"""Answer extraction and comparison: a table of tricky model outputs per answer type."""

from __future__ import annotations

import pytest

from mapd.answers import (
    answer_line,
    answers_match,
    ends_with_answer_line,
    extract_answer,
    normalize_gold,
)
from mapd.tasks.gsm8k import lm_eval_correct, lm_eval_flexible, lm_eval_strict

NUMBER_CASES = [
    # (model output, expected extraction)
    ("The answer is 42.", "42"),
    ("The answer is 42", "42"),
    ("So the answer is 42.\n", "42"),
    ("The answer is $1,234.50.", "1234.5"),
    ("She earns $1,234.50 in total.", "1234.5"),
    ("#### 72", "72"),
    ("48/2 = 24 clips in May.\n#### 72", "72"),
    ("The total is 72.0", "72"),
    ("The answer is 29.00.", "29"),
    ("The answer is -3.", "-3"),
    ("The temperature dropped to -15 degrees.", "-15"),
    ("She has 10 - 7 = 3 left", "3"),
    ("Then 5 - 8", "8"),
    ("The answer is 0.5", "0.5"),
    ("The answer is .5", "0.5"),
    ("The answer is 3/4.", "0.75"),
    ("He ate 1/3 of the pie", "1/3"),
    ("The final answer is \\boxed{18}.", "18"),
    ("So $\\boxed{\\$1,200}$", "1200"),
    ("Therefore \\boxed{\\frac{3}{4}}", "0.75"),
    ("\\boxed{72 \\text{ dollars}}", "72"),
    ("The answer is 25%.", "25"),
    ("About 12.5% of them", "12.5"),
    ("Final answer: 17", "17"),
    ("Final Answer: $17.", "17"),
    ("The final answer is 17 apples, 5 more than 12.", "17"),
    ("The answer is 42 apples, which is 6 more than 36.", "42"),
    ("Answer: 18", "18"),
    ("Answer: She sells 16 - 3 - 4 = 9 eggs and makes 9 * 2 = 18 dollars.", "18"),
    ("The answer is 5. Wait, I made a mistake. The answer is 6.", "6"),
    ("The answer is:\n\n42", "42"),
    ("The answer is **42**.", "42"),
    ("#### 1,000,000", "1000000"),
    ("He ran 5km and then 3km.", "3"),
    ("In 2023 there were 5 cats and 2 dogs, so 7 pets", "7"),
    ("We get 3.5.", "3.5"),
    ("The answer is 007.", "7"),
    ("The answer is −4.", "-4"),
    ("The answer is $-5.", "-5"),
    ("I don't know.", None),
    ("", None),
    ("The answer is unknown.", None),
    ("The answer is 18\n#### 20", "20"),
    ("#### 20\nThe answer is 18", "18"),
    ("It costs 3,5 euros", "5"),
    ("1,2,3 go: total 6.", "6"),
]

YESNO_CASES = [
    ("Yes.", "yes"),
    ("No.", "no"),
    ("yes", "yes"),
    ("The answer is yes.", "yes"),
    ("So the answer is no.", "no"),
    ("Answer: No", "no"),
    ("Answer: **Yes**", "yes"),
    ("I think it is not true", "no"),
    ("That statement is false.", "no"),
    ("That statement is true.", "yes"),
    ("It is not false that whales are mammals.", "yes"),
    ("There is no evidence against it, so yes.", "yes"),
    ("Yes, because there is no way he could have.", "yes"),
    ("No, he did not. It is true that he tried though", "yes"),  # last verdict word
    ("The answer is no. It is true that many believe otherwise.", "no"),  # marker wins
    ("True", "yes"),
    ("False", "no"),
    ("Thus, the answer is: False.", "no"),
    ("There is no such thing as a free lunch.", None),
    ("I am not sure.", None),
    ("So the answer is yes, true is correct.", "yes"),
    ("The claim isn't true.", "no"),
    ("Conclusion: no", "no"),
]

OPTIONS = ["Paris is big", "London is old", "Rome was not built in a day", "Berlin is cold"]
CHOICE_CASES = [
    ("The answer is (C).", None, "C"),
    ("(C)", None, "C"),
    ("Answer: C", None, "C"),
    ("Answer: c", None, "C"),
    ("I would pick option c", None, "C"),
    ("Option B is best.", None, "B"),
    ("C. Rome was not built in a day", OPTIONS, "C"),
    ("After checking, the answer is D because...", OPTIONS, "D"),
    ("Rome was not built in a day, clearly.", OPTIONS, "C"),
    ("rome WAS not built in a day", OPTIONS, "C"),
    ("The answer is a tricky one; I choose (B).", OPTIONS, "B"),
    ("The answer is (A), not (B).", OPTIONS, "A"),
    ("A is wrong. B is wrong. So choice D.", OPTIONS, "D"),
    ("So the correct option is B.", OPTIONS, "B"),
    ("Therefore the answer is B", OPTIONS, "B"),
    ("The answer is: (d)", OPTIONS, "D"),
    ("The answer is E", OPTIONS, None),  # only four options
    ("I have no idea.", OPTIONS, None),
    ("Final answer: **C**", OPTIONS, "C"),
    ("London is old, so the answer is B.", OPTIONS, "B"),
]

TEXT_CASES = [
    ("The answer is Paris.", "paris"),
    ("The answer is  New   York!", "new york"),
    ("Some thinking.\nParis", "paris"),
    ('Answer: "blue"', "blue"),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), NUMBER_CASES)
def test_extract_number(text: str, expected: str | None) -> None:
    assert extract_answer(text, "number") == expected


@pytest.mark.parametrize(("text", "expected"), YESNO_CASES)
def test_extract_yesno(text: str, expected: str | None) -> None:
    assert extract_answer(text, "yesno") == expected


@pytest.mark.parametrize(("text", "options", "expected"), CHOICE_CASES)
def test_extract_choice(text: str, options: list[str] | None, expected: str | None) -> None:
    assert extract_answer(text, "choice", options) == expected


@pytest.mark.parametrize(("text", "expected"), TEXT_CASES)
def test_extract_text(text: str, expected: str | None) -> None:
    assert extract_answer(text, "text") == expected


@pytest.mark.parametrize(
    ("pred", "gold", "answer_type", "expected"),
    [
        ("72.0", "72", "number", True),
        ("72", "72.0", "number", True),
        ("29.00", "29", "number", True),
        ("0.75", "3/4", "number", True),
        ("1/3", "0.333333333", "number", True),
        ("0.33", "1/3", "number", False),
        ("-3", "3", "number", False),
        ("1234.5", "$1,234.50", "number", True),
        ("1000001", "1000000", "number", False),
        (None, "72", "number", False),
        ("yes", "yes", "yesno", True),
        ("no", "yes", "yesno", False),
        ("(C)", "C", "choice", True),
        ("c", "C", "choice", True),
        ("B", "C", "choice", False),
        ("New York", "new york.", "text", True),
        ("42", "42.0", "text", True),
        ("paris", "london", "text", False),
    ],
)
def test_answers_match(pred: str | None, gold: str, answer_type: str, expected: bool) -> None:
    assert answers_match(pred, gold, answer_type) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "answer_type", "options", "expected"),
    [
        (51.0, "number", None, "51"),
        ("1,234", "number", None, "1234"),
        ("Janet sells 9 eggs.\n#### 18", "number", None, "18"),
        (-2.5, "number", None, "-2.5"),
        (True, "yesno", None, "yes"),
        (False, "yesno", None, "no"),
        ("True", "yesno", None, "yes"),
        ("no", "yesno", None, "no"),
        ("c", "choice", None, "C"),
        ("(B)", "choice", None, "B"),
        (2, "choice", OPTIONS, "C"),
        ("Berlin is cold", "choice", OPTIONS, "D"),
        ("  Paris ", "text", None, "Paris"),
    ],
)
def test_normalize_gold(raw: object, answer_type: str, options: list[str] | None, expected: str):
    assert normalize_gold(raw, answer_type, options) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "answer_type"),
    [("many", "number"), (True, "number"), ("maybe", "yesno"), ("F", "choice"), (7, "choice")],
)
def test_normalize_gold_rejects(raw: object, answer_type: str) -> None:
    with pytest.raises(ValueError):
        normalize_gold(raw, answer_type, OPTIONS)  # type: ignore[arg-type]


def test_answer_line_round_trips() -> None:
    assert answer_line("72", "number") == "The answer is 72."
    assert answer_line("yes", "yesno") == "The answer is yes."
    assert answer_line("c", "choice") == "The answer is (C)."
    assert extract_answer(answer_line("-2.5", "number"), "number") == "-2.5"
    assert extract_answer(answer_line("C", "choice"), "choice") == "C"
    assert extract_answer(answer_line("no", "yesno"), "yesno") == "no"


@pytest.mark.parametrize(
    ("text", "answer", "answer_type", "expected"),
    [
        ("She has 3.\nThe answer is 3.", "3", "number", True),
        ("She has 3.\nThe answer is 3.0.\n\n", "3", "number", True),
        ("The answer is 3.\nShe has 3 apples.", "3", "number", False),
        ("She has 3.\nThe answer is 4.", "3", "number", False),
        ("So yes.\nThe answer is yes.", "yes", "yesno", True),
        ("The answer is (C).", "C", "choice", True),
        ("", "3", "number", False),
    ],
)
def test_ends_with_answer_line(text: str, answer: str, answer_type: str, expected: bool) -> None:
    assert ends_with_answer_line(text, answer, answer_type) is expected  # type: ignore[arg-type]


# lm-evaluation-harness gsm8k: filters and exact match after its regexes_to_ignore.
LM_EVAL_CASES = [
    # (output, strict extraction, flexible extraction)
    ("He makes 9 * 2 = $18.\n#### 18", "18", "18"),
    ("The answer is 42.", None, "42."),
    ("#### 1,234", "1,234", "1,234"),
    ("It costs $18.00 in total.", None, "$18.00"),
    ("So -3 degrees", None, "-3"),
    ("no numbers here", None, None),
    ("I have 5 apples.", None, "5"),
    ("The answer is 42. Done...", None, "..."),
]


@pytest.mark.parametrize(("text", "strict", "flexible"), LM_EVAL_CASES)
def test_lm_eval_filters(text: str, strict: str | None, flexible: str | None) -> None:
    assert lm_eval_strict(text) == strict
    assert lm_eval_flexible(text) == flexible


@pytest.mark.parametrize(
    ("extracted", "gold", "expected"),
    [
        ("18", "Janet sells 9.\n#### 18", True),
        ("42.", "42", True),  # the trailing period is one of lm-eval's ignored regexes
        ("1,234", "1234", True),
        ("$18.00", "18", False),  # lm-eval compares strings: 18.00 is not 18
        ("72.0", "72", False),
        ("...", "42", False),
        (None, "42", False),
    ],
)
def test_lm_eval_correct(extracted: str | None, gold: str, expected: bool) -> None:
    assert lm_eval_correct(extracted, gold) is expected


def test_our_extractor_fixes_lm_eval_pitfalls() -> None:
    for text in ["It costs $18.00 in total.", "The answer is 18. Done..."]:
        assert not lm_eval_correct(lm_eval_flexible(text), "18")
        assert answers_match(extract_answer(text, "number"), "18", "number")

"""Final-answer extraction and comparison for every answer type (number, yes/no, choice, text).

    extract_answer("So she makes $1,234.50 a day.\\nThe answer is 1234.5.", "number")  # "1234.5"
    answers_match("72.0", "72", "number")                                             # True

An explicit final-answer marker ("####", "the answer is", "final answer", "Answer:",
"\\boxed{}") wins over everything else; without one, the last number (or verdict word, or
option) in the text is taken. Numbers are normalised to one canonical string ("72", "0.5",
"-3", "1/3") and compared numerically. A task's own extra scoring (lm-evaluation-harness's
for GSM8K) lives with the task, in `mapd.tasks`.
"""

from __future__ import annotations

import re
from fractions import Fraction

from mapd.records import AnswerType

# --- numbers ------------------------------------------------------------------------------

# A number as people and models write it: optional sign and currency, thousands commas,
# decimals, a simple fraction, a percent sign. A period is only part of the number when a
# digit follows it, so "The answer is 42." gives 42, not "42.".
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−–]\s?)?\$?\s?(?P<sign2>[-−])?"
    r"(?:(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?|(?P<bare>\.\d+))"
    r"(?:\s?/\s?(?P<den>\d+)(?![\d.,]\d))?"
    r"(?!\d)"
)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\{\s*(-?\d+(?:\.\d+)?)\s*\}\{\s*(-?\d+(?:\.\d+)?)\s*\}")

# Markers of a final answer, weakest ("Answer:") last. Each is searched case-insensitively.
_STRONG_MARKERS = re.compile(
    r"####|\bthe\s+(?:final\s+|correct\s+|right\s+|best\s+)?(?:answer|option|choice)\s+"
    r"(?:is|would\s+be|should\s+be)\b\s*:?"
    r"|\bfinal\s+answer\b\s*(?:is\b)?\s*:?",
    re.IGNORECASE,
)
_WEAK_MARKER = re.compile(r"\banswer\s*:", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MARKDOWN = re.compile(r"[*_`]+")


def _to_fraction(match: re.Match[str], before: str = "") -> Fraction | None:
    """The value of a _NUMBER match; `before` is the text just before it, to tell a minus
    sign from a subtraction ("10 - 7" is 7, "is -7" is -7)."""
    digits = (match["int"] or "0").replace(",", "") + (match["frac"] or match["bare"] or "")
    value = Fraction(digits)
    if match["den"] is not None:
        if int(match["den"]) == 0:
            return None
        value /= int(match["den"])
    binary_minus = before.rstrip()[-1:].isdigit() or before.rstrip().endswith(")")
    if match["sign2"] or (match["sign"] and not binary_minus):
        value = -value
    return value


def format_number(value: Fraction) -> str:
    """The canonical string of a number: "72", "-3", "0.5", or "1/3" when no exact decimal."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    text = f"{float(value):.15f}".rstrip("0").rstrip(".")
    return text if Fraction(text) == value else str(value)


def parse_number(text: str) -> Fraction | None:
    """The value of a text holding one number ("$1,234.50", "72.0", "3/4", "25%"), else None."""
    text = text.strip().rstrip(".").strip()
    frac = _LATEX_FRAC.fullmatch(text)
    if frac:
        return Fraction(frac[1]) / Fraction(frac[2]) if float(frac[2]) != 0 else None
    text = text.removesuffix("%").strip()
    match = _NUMBER.fullmatch(text)
    return _to_fraction(match) if match else None


def _numbers(text: str) -> list[Fraction]:
    text = _LATEX_FRAC.sub(lambda m: f"{m[1]}/{m[2]}", text)
    values = (
        _to_fraction(m, text[max(0, m.start() - 8) : m.start()]) for m in _NUMBER.finditer(text)
    )
    return [v for v in values if v is not None]


def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """Each \\boxed{...} in the text with its position, braces matched."""
    found = []
    for start in _BOXED.finditer(text):
        depth, i = 1, start.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        found.append((start.start(), text[start.end() : i - 1]))
    return found


def _marked_segments(text: str) -> list[tuple[int, str, bool]]:
    """(position, text after the marker up to the end of its line, is_strong) for every marker."""
    segments: list[tuple[int, str, bool]] = []
    for pattern, strong in ((_STRONG_MARKERS, True), (_WEAK_MARKER, False)):
        for m in pattern.finditer(text):
            rest = text[m.end() :]
            line, _, after = rest.partition("\n")
            if not line.strip():  # "The answer is\n42": the answer sits on the next line
                line = after.lstrip("\n").partition("\n")[0]
            segments.append((m.start(), _MARKDOWN.sub("", line), strong))
    segments += [(pos, content, True) for pos, content in _boxed_contents(text)]
    return sorted(segments, key=lambda s: s[0])


def extract_number(text: str) -> str | None:
    """The final numeric answer of a model output as a canonical string, or None."""
    for _, segment, strong in reversed(_marked_segments(text)):
        values = _numbers(segment)
        # "Answer: Janet sells 16 - 3 - 4 = 9 eggs..." is a rationale, not a final answer:
        # the weak marker only counts when its line holds a single number.
        if values and (strong or len(values) == 1):
            return format_number(values[0])
    values = _numbers(text)
    return format_number(values[-1]) if values else None


def numbers_match(pred: str, gold: str, rel_tol: float = 1e-9, abs_tol: float = 1e-6) -> bool:
    """Equal within a small tolerance: 1/3 matches 0.333333333, 1000001 does not match 1000000."""
    a, b = parse_number(pred), parse_number(gold)
    if a is None or b is None:
        return False
    return abs(a - b) <= max(abs_tol, rel_tol * max(abs(a), abs(b)))


# --- yes / no -----------------------------------------------------------------------------

_VERDICT = re.compile(
    r"\b(?P<neg>not\s+|n't\s+|isn't\s+|is\s+not\s+)?(?P<word>yes|no|true|false)\b", re.IGNORECASE
)
# "no" and "yes" are verdicts when they stand alone ("No, because..." / "...: yes."), not
# when they are determiners ("there is no evidence").
_ALONE_AFTER = re.compile(r"\s*(?:[.,!;:)\]\"'*]|\n|$)")
_ALONE_BEFORE = re.compile(r"(?:^|[.!?:(\"'*\n]\s*|\n\s*)$")


def _verdicts(text: str, anywhere: bool) -> list[str]:
    found = []
    for m in _VERDICT.finditer(text):
        word = m["word"].lower()
        standalone = _ALONE_AFTER.match(text, m.end()) or _ALONE_BEFORE.search(text[: m.start()])
        if word in ("yes", "no") and not (anywhere or standalone):
            continue
        verdict = "yes" if word in ("yes", "true") else "no"
        if m["neg"] and word in ("true", "false"):
            verdict = "no" if verdict == "yes" else "yes"
        found.append(verdict)
    return found


def extract_yesno(text: str) -> str | None:
    for _, segment, _ in reversed(_marked_segments(text)):
        verdicts = _verdicts(segment, anywhere=True)
        if verdicts:
            return verdicts[0]
    verdicts = _verdicts(_MARKDOWN.sub("", text), anywhere=False)
    return verdicts[-1] if verdicts else None


# --- multiple choice ----------------------------------------------------------------------

LETTERS = "ABCDEFGHIJ"


def _letters(options: list[str] | None) -> str:
    return LETTERS[: len(options)] if options else LETTERS[:5]


def _choice_candidates(text: str, options: list[str] | None) -> list[tuple[int, str]]:
    """(position, letter) of every way the text names an option."""
    letters = _letters(options)
    lc = f"[{letters}{letters.lower()}]"
    patterns = [
        rf"\(({lc})\)",  # (C)
        rf"\b(?i:option|choice)\s*:?\s*\(?({lc})\b",  # option c
        rf"(?m)^\s*\**({lc})\**\s*[.):](?:\s|$)",  # "C." at line start
        rf"\b([{letters}])[.!)]?\s*$",  # a bare capital letter at the very end
    ]
    found = [(m.start(), m[1].upper()) for p in patterns for m in re.finditer(p, text)]
    for i, option in enumerate(options or []):
        words = normalize_text(option).split()
        if words and len(" ".join(words)) >= 2:
            pattern = r"\b" + r"\W+".join(map(re.escape, words))
            found += [(m.start(), letters[i]) for m in re.finditer(pattern, text, re.IGNORECASE)]
    return sorted(found)


def _choice_after_marker(segment: str, options: list[str] | None) -> str | None:
    letters = _letters(options)
    head = segment.strip()
    m = re.match(
        rf"(?:option|choice)?\s*\(?([{letters}{letters.lower()}])\)?(?:[\s.,:;)]|$)",
        head,
        re.IGNORECASE,
    )
    # A lowercase bare "a" right after "the answer is" is an article unless it ends the line.
    if m and (
        m[1].isupper()
        or "(" in m[0]
        or m.end() >= len(head.rstrip(". "))
        or head.lower().startswith(("option", "choice"))
    ):
        return m[1].upper()
    candidates = _choice_candidates(head, options)
    return candidates[0][1] if candidates else None


def extract_choice(text: str, options: list[str] | None = None) -> str | None:
    for _, segment, _ in reversed(_marked_segments(text)):
        letter = _choice_after_marker(segment, options)
        if letter:
            return letter
    candidates = _choice_candidates(text, options)
    return candidates[-1][1] if candidates else None


# --- free text ----------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lower case, single spaces, no surrounding quotes or trailing punctuation."""
    text = " ".join(_MARKDOWN.sub("", text).lower().split())
    return text.strip(" \"'").rstrip(".!?,;:").strip(" \"'")


def extract_text(text: str) -> str | None:
    for _, segment, _ in reversed(_marked_segments(text)):
        if segment.strip():
            return normalize_text(segment)
    lines = [line for line in text.splitlines() if line.strip()]
    return normalize_text(lines[-1]) if lines else None


# --- public API ---------------------------------------------------------------------------


def extract_answer(
    text: str, answer_type: AnswerType, options: list[str] | None = None
) -> str | None:
    """The final answer stated in a model output, normalised for its type; None if there is none."""
    if answer_type == "number":
        return extract_number(text)
    if answer_type == "yesno":
        return extract_yesno(text)
    if answer_type == "choice":
        return extract_choice(text, options)
    return extract_text(text)


def answers_match(pred: str | None, gold: str, answer_type: AnswerType) -> bool:
    """Whether an extracted answer equals the gold one (numbers compared by value)."""
    if pred is None:
        return False
    if answer_type == "number":
        return numbers_match(pred, gold)
    if answer_type == "choice":
        return pred.strip().strip("()").upper() == gold.strip().strip("()").upper()
    if answer_type == "text" and parse_number(pred) is not None and parse_number(gold) is not None:
        return numbers_match(pred, gold)
    return normalize_text(pred) == normalize_text(gold)


def normalize_gold(raw: object, answer_type: AnswerType, options: list[str] | None = None) -> str:
    """A dataset's gold answer in canonical form; ValueError when it does not fit the type."""
    if answer_type == "number":
        value = parse_number(str(raw).rpartition("####")[2]) if not isinstance(raw, bool) else None
        if value is None:
            raise ValueError(f"gold answer {raw!r} is not a number")
        return format_number(value)
    if answer_type == "yesno":
        word = str(raw).strip().lower().rstrip(".")
        verdict = {"true": "yes", "yes": "yes", "1": "yes", "false": "no", "no": "no", "0": "no"}
        if word not in verdict:
            raise ValueError(f"gold answer {raw!r} is not yes/no/true/false")
        return verdict[word]
    if answer_type == "choice":
        return _normalize_gold_choice(raw, options)
    text = str(raw).strip()
    if not text:
        raise ValueError("gold answer is empty")
    return text


def _normalize_gold_choice(raw: object, options: list[str] | None) -> str:
    letters = _letters(options)
    if isinstance(raw, int) and not isinstance(raw, bool):
        if 0 <= raw < len(letters):
            return letters[raw]
        raise ValueError(f"gold option index {raw} is out of range")
    text = str(raw).strip().strip("().").strip()
    if len(text) == 1 and text.upper() in letters:
        return text.upper()
    if text.isdigit() and int(text) < len(letters):
        return letters[int(text)]
    for i, option in enumerate(options or []):
        if normalize_text(option) == normalize_text(text):
            return letters[i]
    raise ValueError(f"gold answer {raw!r} is not an option letter ({', '.join(letters)})")


def answer_line(answer: str, answer_type: AnswerType) -> str:
    """The canonical last line of a rationale: "The answer is 72." / "...is yes." / "...is (C)."."""
    if answer_type == "choice":
        return f"The answer is ({answer.strip().strip('()').upper()})."
    return f"The answer is {answer.strip().rstrip('.')}."


def ends_with_answer_line(text: str, answer: str, answer_type: AnswerType) -> bool:
    """Whether the last non-empty line states "The answer is <answer>." for this answer."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines or not _MARKDOWN.sub("", lines[-1]).lower().startswith("the answer is"):
        return False
    return answers_match(extract_answer(lines[-1], answer_type), answer, answer_type)

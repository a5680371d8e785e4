"""How often mapd's number extractor and lm-evaluation-harness's GSM8K filters disagree.

    python bench/lm_eval_agreement.py path/to/gsm8k/test.jsonl

Each GSM8K solution text is scored as if it were a model output, in three forms:
  gold      the solution as released (ends "#### N");
  line      the solution with "#### N" replaced by mapd's answer line "The answer is N.";
  dollar    the same with a money answer written "$N.00" ("The answer is $18.00.");
  body      the solution without its "#### N" line: no marker, the last number must do
            (how untrained small students answer).
For each form it counts correct answers under mapd's extractor, lm-eval strict-match and
lm-eval flexible-extract, and lists, by category, the questions where mapd and
flexible-extract disagree. Writes bench/results/lm_eval_agreement.json.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from mapd.answers import (
    answer_line,
    answers_match,
    extract_answer,
    normalize_gold,
)
from mapd.tasks.gsm8k import lm_eval_correct, lm_eval_flexible, lm_eval_strict

FINAL = re.compile(r"\n?####\s*(.*)$", re.DOTALL)


def variants(solution: str, gold: str) -> dict[str, str]:
    body = FINAL.sub("", solution).rstrip()
    money = "$" in body
    dollar = f"The answer is ${gold}.00." if money else answer_line(gold, "number")
    return {
        "gold": solution,
        "line": f"{body}\n{answer_line(gold, 'number')}",
        "dollar": f"{body}\n{dollar}",
        "body": body,
    }


def category(text: str, ours: str | None, flexible: str | None, gold: str) -> str:
    """A short reason for one disagreement between mapd and flexible-extract."""
    if flexible is None:
        return "flexible-extract found no number"
    if ours is not None and answers_match(ours, gold, "number"):
        cleaned = flexible.replace(",", "").replace("$", "").rstrip(".")
        if re.fullmatch(r"-?\d+\.0+", cleaned):
            return "flexible kept trailing decimal zeros (18.00 vs 18)"
        if not re.search(r"\d", flexible):
            return "flexible took a punctuation run (e.g. '...')"
        if flexible.endswith(".") and cleaned != flexible.rstrip("."):
            return "flexible kept a trailing period"
        return "flexible took a later number than the final answer"
    return "mapd wrong: " + ("no number" if ours is None else "took a different number")


def measure(rows: list[dict[str, str]]) -> dict:
    results: dict = {}
    for form in ("gold", "line", "dollar", "body"):
        counts: Counter[str] = Counter()
        examples: dict[str, list[dict]] = defaultdict(list)
        for index, row in enumerate(rows):
            gold = normalize_gold(row["answer"], "number")
            text = variants(row["answer"], gold)[form]
            ours = extract_answer(text, "number")
            ours_ok = answers_match(ours, gold, "number")
            flexible = lm_eval_flexible(text)
            flex_ok = lm_eval_correct(flexible, row["answer"])
            strict_ok = lm_eval_correct(lm_eval_strict(text), row["answer"])
            counts["total"] += 1
            counts["mapd_correct"] += ours_ok
            counts["flexible_correct"] += flex_ok
            counts["strict_correct"] += strict_ok
            counts["mapd_vs_strict_disagree"] += ours_ok != strict_ok
            if ours_ok != flex_ok:
                reason = category(text, ours, flexible, gold)
                counts["mapd_vs_flexible_disagree"] += 1
                counts[f"reason: {reason}"] += 1
                if len(examples[reason]) < 3:
                    examples[reason].append(
                        {
                            "index": index,
                            "gold": gold,
                            "mapd": ours,
                            "flexible": flexible,
                            "ending": text[-80:],
                        }
                    )
        results[form] = {"counts": dict(counts), "examples": dict(examples)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="GSM8K test.jsonl (question, answer per line)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/lm_eval_agreement.json"))
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.path.read_text(encoding="utf-8").splitlines() if line]
    results = measure(rows)
    for form, result in results.items():
        c = result["counts"]
        n = c["total"]
        print(
            f"[{form}] n={n}  mapd {c['mapd_correct']}  strict {c['strict_correct']}  "
            f"flexible {c['flexible_correct']}  (ratio mapd/flexible "
            f"{c['mapd_correct'] / max(1, c['flexible_correct']):.3f})"
        )
        print(
            f"    mapd vs flexible disagree: {c.get('mapd_vs_flexible_disagree', 0)}; "
            f"mapd vs strict disagree: {c['mapd_vs_strict_disagree']}"
        )
        for key, value in sorted(c.items()):
            if key.startswith("reason: "):
                print(f"      {value:5d}  {key[8:]}")
        for reason, items in result["examples"].items():
            for item in items[:1]:
                print(
                    f"      e.g. [{reason}] gold {item['gold']}, mapd {item['mapd']}, "
                    f"flexible {item['flexible']!r}: ...{item['ending'][-50:]!r}"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"input": args.path.name, **results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

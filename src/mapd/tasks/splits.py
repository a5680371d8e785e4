"""Deterministic splits and subsets by a seeded hash of each question id.

A single-file dataset is divided into train and test by `id_fraction(seed, id) <
test_fraction`; `cfg.limit` keeps the `limit` questions with the smallest hash, in their
original order. Hashing ids (not positions) keeps a question in the same split and subset
when rows are added to or removed from the file.
"""

from __future__ import annotations

import hashlib

from mapd.records import Question


def id_fraction(seed: int, question_id: str, purpose: str) -> float:
    """A number in [0, 1) fixed by seed, id and purpose ("split" or "limit")."""
    digest = hashlib.sha256(f"{purpose}:{seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_hash(
    questions: list[Question], split: str, seed: int, test_fraction: float
) -> list[Question]:
    """The questions of `split` ("train" or "test") out of one file holding both."""
    want_test = split == "test"
    return [q for q in questions if (id_fraction(seed, q.id, "split") < test_fraction) == want_test]


def take_limit(questions: list[Question], limit: int | None, seed: int) -> list[Question]:
    """At most `limit` questions, chosen by seeded hash, kept in their original order."""
    if limit is None or len(questions) <= limit:
        return questions
    ranked = sorted(
        range(len(questions)), key=lambda i: id_fraction(seed, questions[i].id, "limit")
    )
    keep = set(ranked[:limit])
    return [q for i, q in enumerate(questions) if i in keep]

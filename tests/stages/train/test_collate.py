"""Dynamic padding pads to the longest row of the batch, or to a fixed width for the benchmark."""

from __future__ import annotations

from mapd.stages.train.collate import PadCollator
from mapd.stages.train.tokenize import IGNORE

ROWS = [
    {"input_ids": [5, 6, 7], "labels": [IGNORE, 7, 2], "task": 0},
    {"input_ids": [5, 8, 9, 10, 2], "labels": [IGNORE, IGNORE, 9, 10, 2], "task": 1},
]


def test_pads_to_the_longest_row_and_masks_the_padding():
    batch = PadCollator(pad_id=0)(ROWS)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [5, 8, 9, 10, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"][0].tolist() == [IGNORE, 7, 2, IGNORE, IGNORE]
    assert batch["task"].tolist() == [0, 1]


def test_fixed_width_and_multiple_of():
    assert PadCollator(pad_id=0, pad_to=12)(ROWS)["input_ids"].shape == (2, 12)
    assert PadCollator(pad_id=0, pad_to_multiple_of=8)(ROWS)["labels"].shape == (2, 8)

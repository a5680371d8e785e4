"""Dynamic padding: pad a batch of encoded examples to its longest row, never train the padding.

    collate = PadCollator(pad_id=tokenizer.pad_token_id)
    batch = collate([row.__dict__ for row in encoded.rows[:4]])

Rows are padded on the right: `input_ids` with the pad id, `labels` with -100, and the
attention mask is 0 there. `pad_to` fixes every batch to one length instead (the paper
release's padding to 512, kept only for the benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mapd.stages.train.tokenize import IGNORE


@dataclass
class PadCollator:
    """Turn a list of feature dicts (`input_ids`, `labels`, `task`) into padded tensors."""

    pad_id: int
    pad_to_multiple_of: int | None = None
    pad_to: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = self.pad_to or max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of and not self.pad_to:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(features)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            length = len(f["input_ids"])
            input_ids[i, :length] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[i, :length] = torch.tensor(f["labels"], dtype=torch.long)
            attention_mask[i, :length] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "task": torch.tensor([f["task"] for f in features], dtype=torch.long),
        }

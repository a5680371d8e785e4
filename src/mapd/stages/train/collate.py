"""Batches of encoded examples: padded to the longest row, or laid end to end (padding-free).

    collate = PadCollator(pad_id=tokenizer.pad_token_id)       # train.packing: group
    collate = FlatCollator()                                    # train.packing: padding_free
    batch = collate([row.__dict__ for row in encoded.rows[:4]])

`PadCollator` pads rows on the right: `input_ids` with the pad id, `labels` with -100, and
the attention mask is 0 there. `pad_to` fixes every batch to one length instead (the paper
release's padding to 512, kept only for the benchmark).

`FlatCollator` puts the micro-batch's examples in one row, as transformers'
`DataCollatorWithFlattening` does: `position_ids` restart at 0 with every example and there
is no attention mask, from which transformers tells the examples apart (flash-attention's
varlen kernel, or SDPA with a block-diagonal mask; only without a generation cache, which
`prepare_for_training` turns off). Each example's first label is -100, so its first token is
never predicted from the previous example's last. `task` is then per token, not per row.
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


@dataclass
class FlatCollator:
    """Turn a list of feature dicts into one row [1, total tokens] with restarting positions."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, labels, positions, task = [], [], [], []
        for f in features:
            length = len(f["input_ids"])
            input_ids += f["input_ids"]
            labels += [IGNORE, *f["labels"][1:]]
            positions += range(length)
            task += [f["task"]] * length
        return {
            name: torch.tensor([values], dtype=torch.long)
            for name, values in [
                ("input_ids", input_ids),
                ("labels", labels),
                ("position_ids", positions),
                ("task", task),
            ]
        }


def use_varlen_attention(model: torch.nn.Module) -> None:
    """Have the model attend with flash-attention's varlen kernel where it runs (a CUDA GPU
    with flash-attn installed); elsewhere it keeps SDPA, which masks across examples."""
    from transformers.utils import is_flash_attn_2_available

    if torch.cuda.is_available() and is_flash_attn_2_available():
        model.set_attn_implementation("flash_attention_2")

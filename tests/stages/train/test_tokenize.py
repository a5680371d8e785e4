"""Prompt/target encoding: exactly the target and one EOS are trained; overlong examples fail or drop."""

from __future__ import annotations

import pytest
from tests.stages.train.toy_run import toy_examples

from mapd.errors import MapdError
from mapd.prompts import plain_prompt
from mapd.records import Example
from mapd.stages.train.collate import PadCollator
from mapd.stages.train.tokenize import IGNORE, encode_examples


def trained_ids(batch, row: int) -> list[int]:
    labels = batch["labels"][row]
    return labels[labels != IGNORE].tolist()


@pytest.mark.parametrize("prompt_format", ["chat", "plain"])
def test_a_batch_trains_exactly_each_target_and_one_eos(tiny_tokenizer, prompt_format):
    tok = tiny_tokenizer
    examples = toy_examples(4)
    encoded = encode_examples(examples, tok, prompt_format, max_length=256)
    batch = PadCollator(pad_id=tok.pad_token_id)([vars(r) for r in encoded.rows])
    lengths = batch["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1, "the toy batch should need padding"
    for i, example in enumerate(examples):
        ids = trained_ids(batch, i)
        assert tok.decode(ids) == example.output + tok.eos_token
        assert ids.count(tok.eos_token_id) == 1 and ids[-1] == tok.eos_token_id
        n = int(lengths[i])
        # padding: attention 0, never trained; the real tokens end with the trained EOS
        assert batch["attention_mask"][i, n:].sum() == 0
        assert (batch["labels"][i, n:] == IGNORE).all()
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
        assert batch["labels"][i, n - 1] == tok.eos_token_id
        # the prompt: every position before the target is masked, and it is the whole prompt
        prompt_len = n - len(ids)
        assert (batch["labels"][i, :prompt_len] == IGNORE).all()
        prompt = tok.decode(batch["input_ids"][i, :prompt_len])
        assert example.input in prompt and example.output not in prompt
    assert batch["task"].tolist() == [0, 1] * 4


def test_chat_prompt_is_the_generation_prompt(tiny_tokenizer):
    example = toy_examples(1)[0]
    row = encode_examples([example], tiny_tokenizer, "chat", 256).rows[0]
    prompt = row.input_ids[: row.labels.index(next(x for x in row.labels if x != IGNORE))]
    messages = [{"role": "user", "content": example.prompt_text()}]
    expected = tiny_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert prompt == list(expected)


def test_plain_prompt_is_the_paper_format():
    assert plain_prompt("Solve.", "1+1?") == (
        "### Instruction:\nSolve.\n\n### Input:\n1+1?\n\n### Response:\n"
    )
    assert "### Input" not in plain_prompt("Solve 1+1.", "")


def test_a_truncated_target_keeps_no_eos(tiny_tokenizer):
    example = toy_examples(1)[0]
    full = encode_examples([example], tiny_tokenizer, "chat", 256).rows[0]
    cut = encode_examples([example], tiny_tokenizer, "chat", len(full) - 3)
    row = cut.rows[0]
    assert cut.truncated == [example.id] and row.truncated
    assert len(row) == len(full) - 3
    assert tiny_tokenizer.eos_token_id not in row.labels
    assert row.labels == full.labels[: len(row)]


def overlong(tok, n: int = 3) -> list[Example]:
    long_input = "Tom has apples. " * 80
    return [
        Example(
            id=f"long{i}",
            kind="rationale",
            question_id=f"l{i}",
            teacher="t",
            instruction="Answer.",
            input=long_input,
            output="The answer is 1.",
        )
        for i in range(n)
    ]


def test_overlong_prompts_fail_loudly_with_count_and_ids(tiny_tokenizer):
    examples = toy_examples(2) + overlong(tiny_tokenizer)
    with pytest.raises(MapdError) as err:
        encode_examples(examples, tiny_tokenizer, "chat", max_length=64)
    assert "3 of 7" in err.value.message
    assert "long0, long1, long2" in err.value.message
    assert "on_overlong=drop" in err.value.hint


def test_overlong_prompts_are_dropped_and_counted(tiny_tokenizer):
    examples = toy_examples(2) + overlong(tiny_tokenizer)
    encoded = encode_examples(examples, tiny_tokenizer, "chat", max_length=64, on_overlong="drop")
    assert encoded.overlong == ["long0", "long1", "long2"]
    assert [r.id for r in encoded.rows] == [e.id for e in examples[:4]]


def test_a_chat_template_that_cannot_be_split_is_refused(tiny_tokenizer):
    tok = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    with pytest.raises(MapdError, match="prompt_format=plain"):
        encode_examples(toy_examples(1), tok, "chat", 256)


@pytest.mark.parametrize("prompt_format, end", [("chat", "<|end|></s>"), ("plain", "</s>")])
def test_the_target_ends_with_the_templates_end_of_turn_then_eos(
    tiny_tokenizer, prompt_format, end
):
    """Gemma's `<end_of_turn>`, Phi-3's `<|end|>`: a chat student learns to end its turn the
    way its template writes it, then the EOS, at which a server that knows only the EOS
    stops; the plain format has no template and ends with the EOS."""
    tok = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tok.add_special_tokens({"eos_token": "</s>"})  # the template still ends turns with <|end|>
    turn_end = tok.convert_tokens_to_ids("<|end|>")
    assert tok.eos_token == "</s>" and turn_end != tok.eos_token_id
    example = toy_examples(1)[0]
    row = encode_examples([example], tok, prompt_format, 256).rows[0]
    trained = [label for label in row.labels if label != IGNORE]
    assert trained[-1] == tok.eos_token_id and trained.count(tok.eos_token_id) == 1
    assert (turn_end in trained) == (prompt_format == "chat")
    assert tok.decode(trained) == example.output + end


def test_a_template_that_writes_nothing_after_the_reply_ends_it_with_eos(tiny_tokenizer):
    tok = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    row = encode_examples(toy_examples(1), tok, "chat", 256).rows[0]
    assert row.labels[-1] == tok.eos_token_id

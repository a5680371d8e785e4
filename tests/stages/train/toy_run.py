"""A toy training run: examples about small sums, a tiny random Llama and its chat tokenizer.

Used by the training tests (through the fixtures in conftest.py) and nowhere else.
"""

from __future__ import annotations

import random
from pathlib import Path

from mapd.config import RunConfig
from mapd.records import Example

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<pad>", "<s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


def toy_examples(n: int = 24, seed: int = 0) -> list[Example]:
    """Feedback and rationale examples about small sums, with varied lengths."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        question = f"Tom has {a} apples and buys {b} more. How many apples does he have?"
        steps = " ".join(f"Step {k}: count the apples again." for k in range(rng.randint(0, 4)))
        examples.append(
            Example(
                id=f"q{i}-feedback",
                kind="feedback",
                question_id=f"q{i}",
                teacher="t1",
                instruction="Point out the mistakes in the student's answer.",
                input=f"Question: {question}\nStudent answer: {a * b}\nCorrect answer: {a + b}",
                output=f"The student multiplied {a} by {b} instead of adding them. {steps}".strip(),
            )
        )
        examples.append(
            Example(
                id=f"q{i}-rationale",
                kind="rationale",
                question_id=f"q{i}",
                teacher="t2",
                instruction="Answer the question step by step.",
                input=question,
                output=f"{steps} Tom has {a} apples. He buys {b} more, so {a} + {b} = {a + b}. "
                f"The answer is {a + b}.".strip(),
            )
        )
    return examples


def build_tiny_model(folder: Path) -> Path:
    """Save a 2-layer random Llama and its chat tokenizer; eos `<|end|>`, pad `<pad>`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [e.prompt_text() + " " + e.output for e in toy_examples(200, seed=1)]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|end|>",
        additional_special_tokens=SPECIAL[3:],
    )
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_config(model_dir: Path, run_dir: Path, **train: object) -> RunConfig:
    """A run config whose student is the tiny model; teachers are never called in training."""
    settings = {
        "epochs": 1,
        "lr": 5e-3,
        "batch_size": 4,
        "grad_accum": 1,
        "max_length": 128,
        "warmup_ratio": 0.0,
        "lr_scheduler": "constant",
    } | train
    return RunConfig.model_validate(
        {
            "name": "toy",
            "output_dir": str(run_dir),
            "seed": 7,
            "task": {"name": "gsm8k"},
            "student": {"model": str(model_dir)},
            "teachers": [
                {"name": n, "model": n, "base_url": "http://localhost:1/v1"} for n in "ab"
            ],
            "train": settings,
        }
    )


def write_dataset(run_dir: Path, examples: list[Example]) -> Path:
    path = run_dir / "dataset" / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(e.to_json() + "\n" for e in examples), encoding="utf-8")
    return path

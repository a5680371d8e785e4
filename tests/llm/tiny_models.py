"""Tiny random models of other architectures than the training tests' Llama, with its tokenizer.

    build_tiny_like(folder, "gpt2", n_positions=48, n_embd=32, n_layer=2, n_head=4)

Used where the architecture matters: a GPT-2 with few learned positions (a prompt longer
than them fails in the prefill), a Mistral with a sliding window.
"""

from __future__ import annotations

from pathlib import Path

from tests.stages.train.toy_run import build_tiny_model


def build_tiny_like(folder: Path, architecture: str, **config: object) -> Path:
    """Save a random `architecture` model (a transformers model type) sized by `config`,
    with the tiny Llama's chat tokenizer, as a local model folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    build_tiny_model(folder)  # for its tokenizer; the Llama's files are written over below
    tokenizer = AutoTokenizer.from_pretrained(folder)
    settings = AutoConfig.for_model(
        architecture,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **config,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(settings).save_pretrained(folder)
    return folder

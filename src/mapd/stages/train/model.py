"""Load the student for training: resolve its spec, load base model and tokenizer, add LoRA or not.

    model, tokenizer = load_student("HuggingFaceTB/SmolLM2-135M-Instruct", cfg.train)

The spec is a local folder, a hub id, or a GGUF file (`package:pkg/file.gguf` or a path),
which `mapd.llm.model_loading` converts once to a safetensors copy in `$MAPD_HOME`.
Weights are loaded in float32; on a GPU with bfloat16 the Trainer runs in mixed precision.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mapd.config import LoraConfig, TrainConfig
from mapd.errors import MapdError
from mapd.llm.hub_offline import offline_unless_resolvable
from mapd.llm.model_loading import model_source


def load_tokenizer(path: str) -> Any:
    """The student's tokenizer, with a pad token (the EOS if it has none; padding is masked)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def add_lora(model: PreTrainedModel, lora: LoraConfig) -> PreTrainedModel:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            # peft 0.21 reads transformers 5's deprecated alias; the warning is not the user's
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
            return get_peft_model(model, peft_config)
    except ValueError as exc:
        names = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise MapdError(
            f"LoRA target modules do not fit this model: {exc}",
            f"set train.lora.target_modules to some of {names}, or to all-linear",
        ) from None


def load_student(spec: str, train: TrainConfig) -> tuple[PreTrainedModel, Any]:
    """The trainable model (a PEFT model for LoRA) and the tokenizer."""
    path = model_source(spec)
    try:
        with offline_unless_resolvable(path):
            tokenizer = load_tokenizer(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as exc:
        hint = "check the folder" if Path(path).exists() else "give a local folder or a hub id"
        raise MapdError(f"cannot load the student model {spec}: {exc}", hint) from None
    return prepare_for_training(model, train), tokenizer


def prepare_for_training(model: PreTrainedModel, train: TrainConfig) -> PreTrainedModel:
    """No generation cache; inputs that carry gradients for checkpointing; LoRA or not."""
    model.config.use_cache = False
    if train.gradient_checkpointing:
        model.enable_input_require_grads()
    return add_lora(model, train.lora) if train.method == "lora" else model


def merge_adapter(spec: str, adapter_dir: Path, out_dir: Path) -> None:
    """Load the base model fresh, merge the saved adapter into it and save the result."""
    from peft import PeftModel

    path = model_source(spec)
    with offline_unless_resolvable(path):
        base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    load_tokenizer(str(adapter_dir)).save_pretrained(out_dir)

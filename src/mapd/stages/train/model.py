"""Load the student for training: resolve its spec, load base model and tokenizer, add LoRA or not.

    model, tokenizer = load_student("HuggingFaceTB/SmolLM2-135M-Instruct", cfg.train)

The spec is a local folder, a hub id, or a GGUF file (`package:pkg/file.gguf` or a path),
which `mapd.llm.model_loading` converts once to a safetensors copy in `$MAPD_HOME`.
Weights load in the precision they train in (`base_dtype`): full fine-tuning keeps fp32
master weights (the Trainer autocasts to bf16 where `train.precision` resolves to it);
the frozen base of LoRA loads in half precision where its forward pass runs in it, the
adapters stay fp32. `train.quantize` loads the base in 4 or 8 bits (QLoRA, CUDA only).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mapd.config import LoraConfig, TrainConfig
from mapd.errors import MapdError
from mapd.llm.hub_offline import offline_unless_resolvable
from mapd.llm.model_loading import model_source


def native_bf16() -> bool:
    """Whether bf16 arithmetic runs natively: a CUDA GPU with bf16, or a CPU with AMX or
    AVX512-BF16 (there bf16 autocast trains faster than fp32 at a small cost in precision;
    `bench/train_throughput.py --compare precision` measures it)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)  # not on a T4 or V100
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def use_bf16(precision: str) -> bool:
    return precision == "bf16" or (precision == "auto" and native_bf16())


def base_dtype(train: TrainConfig) -> torch.dtype:
    """The dtype the student's weights load in for training.

    Full fine-tuning updates every weight, so they stay fp32 (mixed precision autocasts the
    forward pass, as transformers' Trainer expects with bf16=True). The frozen base of LoRA
    is never updated: it loads in the half precision its forward pass runs in, bf16, or
    fp16 on a CUDA GPU without bf16 (a T4, a V100); peft keeps the adapters fp32."""
    if train.method == "full" or train.precision == "fp32":
        return torch.float32
    if use_bf16(train.precision):
        return torch.bfloat16
    return torch.float16 if torch.cuda.is_available() else torch.float32


def merge_dtype(precision: str) -> torch.dtype:
    """The dtype an adapter is merged in: the precision it trained in (its manifest's)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def check_quantize(train: TrainConfig) -> None:
    """Fail before anything loads unless `train.quantize` can run here (bitsandbytes on CUDA)."""
    if train.quantize is None:
        return
    if not torch.cuda.is_available():
        raise MapdError(
            f"train.quantize: {train.quantize} needs a CUDA GPU (bitsandbytes quantises there)",
            "set train.quantize: null to train LoRA on the unquantised base here",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MapdError(
            f"train.quantize: {train.quantize} needs bitsandbytes, which is not installed",
            "pip install 'mapd[qlora]', or set train.quantize: null",
        )


def quantization(train: TrainConfig) -> dict[str, Any]:
    """`from_pretrained` arguments that load the base quantised for QLoRA, on this process's GPU."""
    if train.quantize is None:
        return {}
    from accelerate import PartialState
    from transformers import BitsAndBytesConfig

    if train.quantize == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if native_bf16() else torch.float16,
        )
    return {
        "quantization_config": config,
        "device_map": {"": PartialState().local_process_index},
    }


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
    check_quantize(train)
    path = model_source(spec)
    try:
        with offline_unless_resolvable(path):
            tokenizer = load_tokenizer(path)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=base_dtype(train), **quantization(train)
            )
    except OSError as exc:
        hint = "check the folder" if Path(path).exists() else "give a local folder or a hub id"
        raise MapdError(f"cannot load the student model {spec}: {exc}", hint) from None
    return prepare_for_training(model, train), tokenizer


def prepare_for_training(model: PreTrainedModel, train: TrainConfig) -> PreTrainedModel:
    """No generation cache; inputs that carry gradients for checkpointing; LoRA or not."""
    model.config.use_cache = False
    if train.quantize is not None:
        from peft import prepare_model_for_kbit_training

        # freezes the base, casts its norms to fp32; checkpointing is set up below and by
        # the Trainer, as without quantisation
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if train.gradient_checkpointing:
        model.enable_input_require_grads()
    return add_lora(model, train.lora) if train.method == "lora" else model


def merge_adapter(spec: str, adapter_dir: Path, out_dir: Path, precision: str = "fp32") -> None:
    """Load the base model fresh and unquantised in the adapter's training `precision`
    (fp32 or bf16), merge the saved adapter into it and save the result."""
    from peft import PeftModel

    path = model_source(spec)
    with offline_unless_resolvable(path):
        base = AutoModelForCausalLM.from_pretrained(path, dtype=merge_dtype(precision))
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    load_tokenizer(str(adapter_dir)).save_pretrained(out_dir)

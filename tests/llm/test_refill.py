"""Refill decoding's own checks: its tensors follow the model's device, and the models it
cannot decode are told apart (the decoded texts are checked in test_hf_backend.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from mapd.llm.refill import Decoding, RefillDecoder, refill_unsupported

SIZES = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def meta_model(architecture: str, **config: object):
    """A tiny random model on the `meta` device: shapes only, no weights, built at once."""
    settings = AutoConfig.for_model(architecture, **SIZES, **config)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(settings).eval()


def test_every_input_of_a_model_call_is_on_the_models_device():
    """The model lives on `meta`, a real torch device other than the CPU (this machine has no
    GPU); a hook on its forward checks the device of every tensor refill hands it. A meta
    model computes shapes, not values, so the steps that read values (`run`'s token lists,
    `keep_rows`' first used column) cannot run here; the ones that build the model's inputs
    do: a prefill, a second prefill joining the cache of rows in flight, a decoding step."""
    model = meta_model("llama", attn_implementation="eager")  # sdpa reads the mask's values
    calls: list[dict[str, torch.device]] = []

    def same_device(module, args, kwargs):
        inputs = {k: v.device for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        calls.append(inputs)
        assert all(d == model.device for d in inputs.values()), f"on {model.device}: {inputs}"

    model.register_forward_pre_hook(same_device, with_kwargs=True)
    decoder = RefillDecoder(model, end_ids={2}, pad_id=0, batch_size=4, decoding=Decoding(8))
    with torch.inference_mode():
        decoder.join([("a", [5, 6, 7]), ("b", [8, 9])])
        decoder.join([("c", [5, 6, 7, 9, 9])])
        decoder.step(decoder.pick(decoder.logits))
    assert len(calls) == 3 and all(len(c) == 3 for c in calls)  # ids, mask, positions
    assert decoder.mask.device == model.device
    assert decoder.cache.layers[0].keys.shape[:3] == (3, 2, 6)  # 5 columns, one step


@pytest.mark.parametrize(
    "architecture, config, why",
    [
        ("llama", {}, None),
        ("mistral", {"sliding_window": None}, None),
        # Mistral, Mixtral, Phi-3-mini-4k and Starcoder2 set a window but no layer_types
        ("mistral", {"sliding_window": 4}, "sliding-window attention"),
        ("phi3", {"sliding_window": 4}, "sliding-window attention"),
        (
            "qwen2",
            {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
            "sliding-window attention",
        ),
    ],
)
def test_models_whose_cache_refill_cannot_rewrite_are_told_apart(architecture, config, why):
    said = refill_unsupported(meta_model(architecture, **config))
    assert said == why or (why is not None and said is not None and why in said)


def test_a_generation_config_that_picks_tokens_otherwise_is_told_apart():
    model = meta_model("llama")
    model.generation_config.repetition_penalty = 1.3
    assert refill_unsupported(model) == "its generation config sets repetition_penalty"

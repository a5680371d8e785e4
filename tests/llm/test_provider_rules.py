"""What mapd sends to each kind of endpoint, against loopback servers that refuse bodies the
way OpenAI, Anthropic and Gemini document (with their own error bodies), and a vLLM server
with a reasoning parser; and what it does with refusals, cut-off replies, missing usage."""

from __future__ import annotations

import asyncio
import time

import pytest

from mapd.config import Limits, ModelEndpoint, Sampling
from mapd.llm import EndpointUnavailable, Request, client_for, request_key
from mapd.llm.ledger import Budget
from mapd.llm.openai_backend import request_body
from mapd.testing.loopback import Fault, LoopbackServer, ScriptedReply
from mapd.testing.providers import anthropic, gemini, openai_reasoning, refusing, vllm_reasoning


def endpoint(server: LoopbackServer, model: str = "m", **fields) -> ModelEndpoint:
    fields.setdefault("limits", Limits(concurrency=1, max_attempts=2))
    return ModelEndpoint(name="t", model=model, base_url=server.base_url, **fields)


def complete_many(ep: ModelEndpoint, store, n: int = 1, budget: Budget | None = None):
    async def go():
        client = client_for(ep, store=store, budget=budget, run="r", stage="teach")
        try:
            return await client.complete_many([Request.user(f"q{i}") for i in range(n)])
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_an_openai_reasoning_model_gets_max_completion_tokens_and_no_temperature(store):
    with LoopbackServer(reply=refusing(openai_reasoning)) as server:
        ep = endpoint(server, "gpt-5-mini", sampling=Sampling(reasoning_effort="low"))
        (result,) = complete_many(ep, store)
    assert result.ok, result.error
    sent = server.requests[-1]
    assert sent["max_completion_tokens"] == 512 and sent["reasoning_effort"] == "low"
    assert not {"max_tokens", "temperature", "top_p", "seed"} & set(sent)


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini", "gpt-5", "openai/gpt-5.1"])
def test_every_reasoning_family_is_recognised(model):
    ep = ModelEndpoint(model=model, base_url="http://127.0.0.1:1/v1")
    body = request_body(ep, Request.user("q", temperature=0.8, top_p=1.0, max_tokens=9))
    assert body["max_completion_tokens"] == 9 and "temperature" not in body


def test_other_models_get_max_tokens_and_top_p_only_when_not_1():
    ep = ModelEndpoint(model="gpt-4o-mini", base_url="http://127.0.0.1:1/v1")
    body = request_body(ep, Request.user("q", temperature=0.8, top_p=1.0, max_tokens=9))
    assert body == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "q"}],
        "temperature": 0.8,
        "max_tokens": 9,
    }
    assert request_body(ep, Request.user("q", top_p=0.9))["top_p"] == 0.9


def test_a_refusal_repeated_stops_the_endpoint_quoting_the_provider_and_the_field(store):
    with LoopbackServer(reply=refusing(openai_reasoning)) as server:
        # the user set a temperature the model does not take
        ep = endpoint(server, "o3-mini", sampling=Sampling(temperature=0.2))
        with pytest.raises(EndpointUnavailable) as info:
            complete_many(ep, store, n=8)
    assert len(server.requests) == 3  # not 8: the rest were not sent
    assert "'temperature' does not support 0.2 with this model" in info.value.message
    assert "sampling.temperature" in info.value.hint and "'t'" in info.value.hint
    assert sum(r.skipped for r in info.value.results) == 5


def test_an_unknown_name_for_a_reasoning_model_is_fixed_with_extra_body(store):
    """An Azure deployment named by the user is not recognised; the refusal names the fix."""
    with LoopbackServer(reply=refusing(openai_reasoning)) as server:
        ep = endpoint(server, "my-deployment", sampling=Sampling(temperature=1))
        with pytest.raises(EndpointUnavailable) as info:
            complete_many(ep, store, n=4)
        assert "Use 'max_completion_tokens' instead" in info.value.message
        assert "extra_body: {max_tokens: null, max_completion_tokens: N}" in info.value.hint
        fixed = ep.model_copy(
            update={"extra_body": {"max_tokens": None, "max_completion_tokens": 512}}
        )
        assert all(r.ok for r in complete_many(fixed, store, n=4))
    assert server.requests[-1]["max_completion_tokens"] == 512
    assert "max_tokens" not in server.requests[-1]


def test_anthropic_gets_temperature_alone_by_default_and_top_p_can_be_removed(store):
    with LoopbackServer(reply=refusing(anthropic)) as server:
        assert complete_many(endpoint(server, "claude-sonnet-4-5"), store)[0].ok
        assert "top_p" not in server.requests[-1]
        both = endpoint(server, "claude-sonnet-4-5", sampling=Sampling(top_p=0.9))
        with pytest.raises(EndpointUnavailable) as info:
            complete_many(both, store, n=3)
        assert "`temperature` and `top_p` cannot both be specified" in info.value.message
        assert "extra_body: {top_p: null}" in info.value.hint
        one = both.model_copy(update={"extra_body": {"top_p": None}})
        assert complete_many(one, store)[0].ok


def test_gemini_gets_no_seed_unless_set_and_its_list_shaped_refusal_is_quoted(store):
    with LoopbackServer(reply=refusing(gemini)) as server:
        assert complete_many(endpoint(server, "gemini-2.5-flash"), store)[0].ok
        seeded = endpoint(server, "gemini-2.5-flash", sampling=Sampling(seed=7))
        with pytest.raises(EndpointUnavailable) as info:
            complete_many(seeded, store, n=3)
    assert 'Unknown name "seed": Cannot find field.' in info.value.message
    assert "sampling.seed: null" in info.value.hint


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_vllm_reasoning_is_kept_apart_from_the_answer_and_can_be_switched_off(store, field):
    reply = vllm_reasoning("The answer is 4.", "2 and 2 make 4.", field)
    with LoopbackServer(reply=reply) as server:
        (thinking,) = complete_many(endpoint(server, "Qwen/Qwen3-8B"), store)
        off = {"chat_template_kwargs": {"enable_thinking": False}}
        (plain,) = complete_many(endpoint(server, "Qwen/Qwen3-8B", extra_body=off), store)
    assert (
        thinking.text == "The answer is 4." and thinking.completion.reasoning == "2 and 2 make 4."
    )
    assert server.requests[-1]["chat_template_kwargs"] == {"enable_thinking": False}
    assert plain.text == "The answer is 4." and plain.completion.reasoning is None


def test_extra_body_is_part_of_the_cache_key_and_old_configs_keep_their_keys(server, store):
    old_key = "sha256:81956319917e816d50903b41576e9ff80fbb1cc73ddd7153bb532243750ea047"
    request = Request.user("What is 2+3?", model="gpt-4o-mini", temperature=0.8, top_p=1.0)
    assert request_key(request.replace(max_tokens=512), "openai", "https://api.openai.com/v1") == (
        old_key
    )
    plain = endpoint(server)
    complete_many(plain, store)
    complete_many(endpoint(server, extra_body={"top_k": 20}), store)
    keys = [k for (k,) in store.db.execute("SELECT key FROM calls ORDER BY id")]
    resolved = Request.user("q0", model="m", temperature=0.8, top_p=1.0, max_tokens=512)
    assert keys[0] == request_key(resolved, "openai", server.base_url)
    assert keys[1] != keys[0] and len(server.requests) == 2


def test_a_reply_cut_off_is_marked_and_an_empty_one_says_which_setting_to_change(store):
    replies = iter(
        [
            ScriptedReply("Step 1: add. Step 2: comp", finish_reason="length"),
            ScriptedReply(None, "length", reasoning="Let me think..." * 50, reasoning_tokens=512),
        ]
    )
    with LoopbackServer(reply=lambda request: next(replies)) as server:
        cut, empty = complete_many(endpoint(server, "o4-mini"), store, n=2)
    assert cut.ok and cut.completion.cut_off and cut.completion.finish_reason == "length"
    assert not empty.ok and len(server.requests) == 2  # not retried: it would end the same
    assert "cut off at max_tokens (512) before any answer (512 reasoning tokens)" in empty.error
    assert "raise sampling.max_tokens" in empty.error and "reasoning_effort" in empty.error
    rows = store.db.execute("SELECT finish_reason, reasoning_tokens FROM calls ORDER BY id")
    assert rows.fetchall() == [("length", 0), ("length", 512)]


def test_without_usage_tokens_are_estimated_and_the_budget_still_stops(store, capsys, monkeypatch):
    monkeypatch.setattr("mapd.llm.client.TOLD_NO_USAGE", set())  # not yet told in this process
    long_reply = ScriptedReply("The answer is 4. " * 10, usage=False)
    with LoopbackServer(reply=lambda request: long_reply) as server:
        ep = endpoint(server, limits=Limits(concurrency=1))
        with pytest.raises(Exception, match="budget reached") as info:
            complete_many(ep, store, n=20, budget=Budget(tokens=60))
    done = [r for r in info.value.results if r.ok]
    assert 0 < len(done) < 20 and len(server.requests) == len(done)
    assert all(r.completion.estimated and r.completion.completion_tokens > 0 for r in done)
    assert capsys.readouterr().err.count("sends no token usage") == 1
    estimated = store.db.execute("SELECT SUM(estimated) FROM calls").fetchone()[0]
    assert estimated == len(done)


def test_a_timed_out_request_is_not_sent_again_while_the_server_still_works_on_it(
    store, sleeps, tmp_path
):
    """A server answering one request at a time, 0.5 s each; the client gives up after 1.2 s,
    so the third and fourth of four requests sent at once time out while queued."""
    done_at: dict[str, list[float]] = {}

    def reply(request):
        done_at.setdefault(request["messages"][-1]["content"], []).append(time.monotonic())
        return "The answer is 4."

    with LoopbackServer(reply=reply, latency=0.5, serial=True) as server:
        ep = endpoint(server, limits=Limits(concurrency=4, max_attempts=3, timeout=1.2))
        results = complete_many(ep, store, n=4)
    arrivals: dict[str, list[float]] = {}
    for request, at in zip(server.requests, server.arrivals, strict=True):
        arrivals.setdefault(request["messages"][-1]["content"], []).append(at)
    for body, times in arrivals.items():
        for later, earlier_done in zip(times[1:], done_at[body], strict=False):
            assert later >= earlier_done, f"{body} sent again while the server worked on it"
    assert all(r.ok for r in results)
    assert sum(r.timeouts for r in results) == 2
    ledger = store.db.execute("SELECT SUM(timeouts) FROM calls").fetchone()[0]
    assert ledger == 2


def test_a_timeout_is_counted_and_its_error_names_the_settings(server, store, sleeps, capsys):
    server.faults.append(Fault("hang"))
    ep = endpoint(server, limits=Limits(max_attempts=1, timeout=0.3))
    with pytest.raises(EndpointUnavailable) as info:  # every attempt of the batch timed out
        complete_many(ep, store)
    (result,) = info.value.results
    assert not result.ok and result.timeouts == 1
    assert "limits.timeout" in result.error and "limits.concurrency" in result.error
    assert "limits.timeout" in info.value.hint
    assert "failed 1, timed out 1," in capsys.readouterr().err  # the progress line

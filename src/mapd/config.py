"""The run configuration: pydantic models for every setting, YAML loading and key=value overrides.

    cfg = load_config("configs/demo.yaml", ["train.lr=2e-5", "teachers.0.model=gpt-4o-mini"])

Every model rejects unknown keys; `load_config` reports all problems of a file at once,
each with its dotted path, and names the closest valid key for a misspelt one.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import sys
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from mapd.errors import MapdError

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
    backend: Literal["openai", "transformers"] = Field(
        "openai",
        description="openai: HTTP to an OpenAI-compatible server; transformers: the model in "
        "this process.",
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
    batch_size: int = Field(8, ge=1, description="transformers: prompts generated together.")
    batching: Literal["refill", "padded"] = Field(
        "refill",
        description="transformers: refill = a row whose reply ended takes the next prompt at "
        "once; padded = each batch runs until its longest reply ends (the fallback).",
    )
    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="transformers: cpu, cuda (or cuda:N), mps or auto.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="transformers: the weights' type; auto: bfloat16 on a GPU with it."
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
        if self.backend == "transformers":
            http_only = [k for k in ("base_url", "api_key_env", "batch") if getattr(self, k)]
            if http_only:
                raise ValueError(
                    f"{', '.join(http_only)} set, but backend transformers runs the model in "
                    "this process and ignores it: set `backend: openai` to call an API, or "
                    "remove it"
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
    backend: Literal["openai", "transformers"] = Field(
        "transformers",
        description="transformers: the model in this process; openai: a server (vLLM, ...) "
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
        "package: file. None = model.",
    )

    @model_validator(mode="after")
    def _check_weights(self) -> StudentConfig:
        if self.weights is not None and self.backend != "openai":
            raise ValueError(
                "weights is for a student served over HTTP; backend transformers loads model: "
                "remove weights, or put its value in model"
            )
        return self

    @property
    def trained_from(self) -> str:
        """The weights training starts from: `weights`, else the model's name."""
        return self.weights or self.model


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
    merge: bool = Field(False, description="Also save the adapter merged into the base model.")
    report_to: list[str] = Field(default_factory=list, description="tensorboard, wandb, ...")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, slower."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 mixed precision where the hardware has bf16 arithmetic "
        "(CUDA, or a CPU with AMX or AVX512-BF16), else fp32. The weights stay fp32.",
    )
    logging_steps: int = Field(10, ge=1, description="Log the losses every this many steps.")
    seed: int | None = Field(
        None,
        description="Seed of the training and of the random pick of examples (dataset.pick); "
        "none = the run's `seed`. The questions, exam, teaching, reviews and evaluation keep "
        "the run's seed, so `mapd ablate`'s seeds repeat only what training draws.",
    )


class EvalConfig(Strict):
    split: Literal["test", "train"] = Field("test", description="The split evaluated.")
    limit: int | None = Field(None, ge=1, description="At most this many questions evaluated.")
    samples: int = Field(1, ge=1, description="k samples per question for majority vote.")
    temperature: float = Field(0.0, ge=0, le=2, description="0 is greedy.")
    max_tokens: int = Field(512, ge=1, description="Most tokens of an answer.")
    base: bool = Field(
        True, description="Also measure the untrained student, for the before/after."
    )
    trained: ModelEndpoint | None = Field(
        None,
        description="Evaluate the trained student through this endpoint, e.g. a vLLM server "
        "started with --enable-lora --lora-modules student=RUN/student/adapter and asked for "
        "model `student`. Unset: the trained student runs in-process from student/ (also when "
        "the student is served over HTTP), or eval stops before any request when it cannot be "
        "loaded here. Used in round 1 only: later rounds run the student in-process.",
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
        "mapd-answer-check, committee-no-review, single-<teacher>, or a variant's name); "
        "none = every row.",
    )
    variants: dict[str, list[str]] | None = Field(
        None,
        description="`mapd ablate`: more rows, each MAPD with these KEY=VALUE settings, "
        "compared with MAPD like the others, e.g. {mapd-pick-all: [dataset.pick=all]}.",
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


# --- loading -----------------------------------------------------------------------------


class ConfigLoader(yaml.SafeLoader):
    """YAML as a config wants it: a key given twice in one section is an error, not a silent
    replacement of the first. Checked as each section is read, before `<<` merges apply."""

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        lines: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in lines:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"`{key_node.value}` is given twice in one section (lines "
                    f"{lines[key_node.value]} and {line}); keep one",
                    key_node.start_mark,
                )
            lines[key_node.value] = line
        return node


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader)


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MapdError(f"override {item!r} is not KEY=VALUE", "e.g. train.lr=2e-5")
        try:
            value = load_yaml(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.split("."), value))
    return parsed


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(path[:i]) or "(top)"
                raise MapdError(
                    f"override {'.'.join(path)}: {where} has {len(node)} items, no index {part}",
                    "use an index from 0",
                )
            idx = int(part)
            if last:
                node[idx] = value
            else:
                node = node[idx]
        else:
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict | list):
                    raise MapdError(
                        f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section",
                        "check the key path",
                    )


def _section_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The config section (a model class) that `loc` points into, or None."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if field is None:
            return None
        current = section_type(field.annotation) or field.annotation
    return current if hasattr(current, "model_fields") else None


def section_type(annotation: Any) -> Any:
    """The model class of a field that is a section (also inside `X | None`, `list[X]`)."""
    if hasattr(annotation, "model_fields"):
        return annotation
    return next(
        (a for a in getattr(annotation, "__args__", ()) if hasattr(a, "model_fields")), None
    )


# Other tools' names for a setting (transformers, TRL, LLaMA-Factory).
KEY_ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "lora_rank": "r"}


def _suggest_key(section: Any, key: str) -> str:
    """The closest valid key, looking one section deeper too: `temprature` in a teacher is
    `sampling.temperature`, not the top-level `system_prompt` that merely looks alike."""
    candidates = {name: name for name in section.model_fields}
    for name, field in section.model_fields.items():
        inner = section_type(field.annotation)
        for leaf in getattr(inner, "model_fields", {}) if inner is not None else {}:
            candidates.setdefault(leaf, f"{name}.{leaf}")
    guess = difflib.get_close_matches(KEY_ALIASES.get(key, key), list(candidates), n=1, cutoff=0.6)
    if guess:
        return f"did you mean `{candidates[guess[0]]}`?"
    return f"valid keys: {', '.join(section.model_fields)}"


# What a section given as a plain value was most likely meant to say.
SECTION_HINTS = {
    "review": " (to train on every rationale without review: dataset.mode: committee_no_review)",
    "budget": " (e.g. budget: {usd: 20} or budget: {tokens: 5000000})",
}


def format_errors(err: ValidationError) -> list[str]:
    """One line per wrong setting, in the config's words, not pydantic's."""
    found: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for e in err.errors():
        loc = _setting_path(e["loc"])
        path = ".".join(str(p) for p in loc) or "config"
        kind = e["type"]
        if kind == "extra_forbidden":
            section = _section_at(RunConfig, loc)
            hint = _suggest_key(section, str(loc[-1])) if section is not None else "not a setting"
            msg = f"unknown key; {hint}"
        elif kind == "missing":
            msg = "required key is missing"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = "expected a section of KEY: VALUE settings" + SECTION_HINTS.get(path, "")
        elif kind == "list_type" and path == "teachers":
            msg = "expected a list: start each teacher with `- ` (e.g. `  - name: gpt-4o-mini`)"
        else:
            msg = e["msg"].removeprefix("Value error, ").replace(" after validation", "")
            # a whole section as the value says nothing the message does not: it names the field
            if not isinstance(e["input"], dict | list):
                got[path] = f" (got {e['input']!r})"
        if msg not in found.setdefault(path, []):
            found[path].append(msg)
    return [f"{path}: {'; or '.join(msgs)}{got.get(path, '')}" for path, msgs in found.items()]


def _setting_path(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """`loc` as the setting's path: pydantic's validator names dropped, and a value of a
    union type (`batch: maybe` tried as `bool` and as `literal[...]`) reported at the
    setting itself, not once per member tried."""
    path: list[Any] = []
    current: Any = RunConfig
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        path.append(part)
        current = _inside(current, part)
        if _is_union(current):
            break
    return tuple(path)


def _inside(annotation: Any, part: Any) -> Any:
    """The annotation of `part` inside `annotation` (a model's field, a list's item, a
    dict's value), or None when unknown."""
    annotation = _without_none(annotation)
    if hasattr(annotation, "model_fields"):
        field = annotation.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    args = get_args(annotation)
    if get_origin(annotation) in (list, tuple) and isinstance(part, int) and args:
        return args[0]
    if get_origin(annotation) is dict and len(args) == 2:
        return args[1]
    return None


def _without_none(annotation: Any) -> Any:
    """`X | None` as X (pydantic reports no member for it)."""
    if get_origin(annotation) in (Union, UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(_without_none(annotation)) in (Union, UnionType)


# What PyYAML's words for the usual slips mean.
YAML_HINTS = {
    "mapping values are not allowed here": "indent the line to its section's keys, put a "
    "section's keys on their own lines (`task: name: gsm8k` is two levels on one line), or "
    "quote a value that holds `: `",
    "expected <block end>, but found '<block mapping start>'": "indent the keys of one section "
    "alike (two spaces deeper than the section's name; in a list, under the first key after `- `)",
    "found character '\\t' that cannot start any token": "indent with spaces, not tabs",
}


def preset_or_path(path: Path) -> Path:
    """`path`, or the preset it names: a relative name with no suffix that is no file here,
    such as `paper/svamp` (said on stderr, so a preset is never taken for a file silently)."""
    if path.exists() or path.is_absolute() or path.suffix or not path.name:
        return path
    if path.with_suffix(".yaml").exists():
        return path.with_suffix(".yaml")
    preset = PRESETS / path.with_suffix(".yaml")
    if not preset.is_file():
        return path
    print(f"note: {path} is the preset shipped in the package ({preset})", file=sys.stderr)
    return preset


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's settings; a name such as `paper/svamp` that is no file is the preset
    of that name shipped in the package (for an installed mapd without the repository)."""
    path = preset_or_path(Path(path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MapdError(
            f"config file {path} not found",
            f"check the path (presets in the package: {', '.join(preset_names())})",
        ) from None
    except UnicodeDecodeError:
        raise MapdError(f"config file {path} is not UTF-8 text", "save it as UTF-8") from None
    except IsADirectoryError:
        raise MapdError(
            f"{path} is a folder, not a config file",
            "give the YAML file, e.g. configs/demo.yaml or a run's RUN_DIR/config.yaml",
        ) from None
    except OSError as exc:
        raise MapdError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise MapdError(
            f"{path}: malformed YAML{where}: {problem}",
            YAML_HINTS.get(problem, "fix the YAML syntax"),
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MapdError(
            f"{path}: expected a mapping of settings at the top level",
            "a config is KEY: VALUE lines (name:, task:, student:, teachers: ...), "
            "e.g. configs/demo.yaml",
        )
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply key=value overrides, validate; raise MapdError listing every problem."""
    data = read_yaml(path)
    for keys, value in parse_overrides(overrides or []):
        apply_override(data, keys, value)
    if data.get("output_dir") == ".":
        # the config.yaml kept in a run folder points at the folder that holds it
        data["output_dir"] = str(Path(path).parent)
    return validate_config(data, source=str(path))


def saved_overrides(path: str | Path, overrides: list[str]) -> list[tuple[str, Any, Any]]:
    """The overrides that change a run folder's own config.yaml: (key, value before, after).

    A run saves its resolved config as RUN_DIR/config.yaml, the record of what it ran with.
    When that same file is the config given, an override is therefore kept for every later
    run of it; the caller says so. Empty when `path` is any other file.
    """
    path = Path(path)
    if not overrides or path.name != "config.yaml":
        return []
    resolved = load_config(path, overrides)
    if resolved.run_dir.resolve() != path.parent.resolve():
        return []  # the resolved config is saved in another folder (output_dir was overridden)
    try:
        before = load_config(path).model_dump(mode="json")
    except MapdError:  # the file alone is invalid and an override mends it
        before = read_yaml(path)
    after = resolved.model_dump(mode="json")
    changes = []
    for keys, _ in parse_overrides(overrides):
        old, new = _lookup(before, keys), _lookup(after, keys)
        if old != new:
            changes.append((".".join(keys), old, new))
    return changes


def _lookup(data: Any, keys: list[str]) -> Any:
    for key in keys:
        if isinstance(data, list) and key.isdigit() and int(key) < len(data):
            data = data[int(key)]
        elif isinstance(data, dict):
            data = data.get(key)
        else:
            return None
    return data


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        problems = format_errors(err)
        raise MapdError(
            f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems),
            "fix these keys, then run `mapd validate` again",
        ) from None


PRESETS = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(
        p.relative_to(PRESETS).with_suffix("").as_posix() for p in PRESETS.rglob("*.yaml")
    )


def preset_path(name: str) -> Path:
    """A config shipped inside the package, e.g. `paper/svamp`."""
    path = PRESETS / f"{name}.yaml"
    if not path.exists():
        raise MapdError(f"no preset {name!r}", f"presets: {', '.join(preset_names())}")
    return path


def dump_run_config(cfg: RunConfig) -> str:
    """The resolved config as kept in the run folder: `output_dir: .` so the folder can move."""
    data = cfg.model_dump(mode="json")
    data["output_dir"] = "."
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

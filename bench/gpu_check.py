"""One device check: mapd's generation engines and trainers on a tiny random model, on one device.

    python bench/gpu_check.py                 # cuda when there is one, else cpu
    python bench/gpu_check.py --device cpu    # the same on the CPU (QLoRA is skipped there)

Builds a 2-layer random Llama and a BPE chat tokenizer trained in-process (no network, no
downloads), then on the device: greedy generation of 16 prompts x 32 new tokens through the
transformers backend with `batching: refill` and `batching: padded` (texts compared, tokens/s
each), and a few steps of the train stage with LoRA, QLoRA (`train.quantize: 4bit`; CUDA and
bitsandbytes only) and full fine-tuning, `train.precision: auto` (bf16 where the device has
it). Prints one table on stdout (everything else goes to stderr) and writes JSON to
bench/results/gpu_check.json. Exits 1 if an engine or a trainer fails; texts that differ
between the engines (near-ties of a random model in bf16) are counted, not failed.

Runs from the repository root without mapd installed (it adds src/ to sys.path). Training
tokens/s counts input tokens, padding excluded, over every step but the first (warm-up).
Peak memory is torch's peak allocated on CUDA, the process's peak RSS on the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPTS, NEW_TOKENS = 16, 32
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL = ["<pad>", "<s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
TRAININGS = {"lora": {}, "qlora": {"quantize": "4bit"}, "full": {"method": "full"}}


def toy_examples(n: int, seed: int = 0) -> list[Any]:
    """Feedback and rationale examples about small sums, of varied lengths."""
    from mapd.records import Example

    rng, examples = random.Random(seed), []
    for i in range(n):
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        question = f"Tom has {a} apples and buys {b} more. How many apples does he have?"
        steps = " ".join(f"Step {k}: count the apples again." for k in range(rng.randint(0, 4)))
        shared = {"question_id": f"q{i}"}
        examples.append(
            Example(
                id=f"q{i}-feedback",
                kind="feedback",
                teacher="t1",
                instruction="Point out the mistakes in the student's answer.",
                input=f"Question: {question}\nStudent answer: {a * b}\nCorrect answer: {a + b}",
                output=f"The student multiplied {a} by {b} instead of adding them. {steps}",
                **shared,
            )
        )
        examples.append(
            Example(
                id=f"q{i}-rationale",
                kind="rationale",
                teacher="t2",
                instruction="Answer the question step by step.",
                input=question,
                output=f"{steps} {a} + {b} = {a + b}. The answer is {a + b}.".strip(),
                **shared,
            )
        )
    return examples


def build_tiny_model(folder: Path) -> Path:
    """Save a 2-layer random Llama and its chat tokenizer (eos `<|end|>`, pad `<pad>`)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(  # its progress would go to stdout, around the table
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=alphabet, show_progress=False
    )
    bpe.train_from_iterator(
        [e.prompt_text() + " " + e.output for e in toy_examples(200, 1)], trainer
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|end|>",
        additional_special_tokens=SPECIAL[3:],
    )
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def reset_peak(cuda: bool) -> None:
    import torch

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:  # 5 resets the process's peak RSS (VmHWM), Linux only
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")


def peak_mib(cuda: bool) -> float:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(model_dir: Path, device: str, batching: str, prompts: list[str]) -> dict[str, Any]:
    """Greedy replies to `prompts` through the transformers backend, after a short warm-up."""
    from mapd.config import Sampling, StudentConfig
    from mapd.llm import Request, client_for

    endpoint = StudentConfig(
        name=batching,
        model=str(model_dir),
        device=device,
        batching=batching,
        batch_size=8,
        sampling=Sampling(temperature=0.0, max_tokens=NEW_TOKENS),
    )

    async def ask(texts: list[str]) -> tuple[Any, list[Any]]:
        client = client_for(endpoint, store=None)
        results = await client.complete_many([Request.user(t) for t in texts])
        await client.aclose()
        return client, results

    asyncio.run(ask(prompts[:2]))  # loads the model (shared by both engines), warms the kernels
    reset_peak(device == "cuda")
    started = time.perf_counter()
    client, results = asyncio.run(ask(prompts))
    seconds = time.perf_counter() - started
    errors = [str(r.error) for r in results if not r.ok]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(results)} prompts failed: {errors[0]}")
    model = client.backend.loaded.model
    tokens = sum(r.completion.completion_tokens for r in results)
    return {
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_mib": round(peak_mib(device == "cuda"), 1),
        "texts": [r.text for r in results],
    }


def make_meter() -> Any:
    """A TrainerCallback that counts input tokens and step seconds (the first step is warm-up)
    and reads the dtypes of a frozen base weight and of a LoRA weight."""
    import torch
    from transformers import TrainerCallback

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class Meter(TrainerCallback):
        counted = tokens = 0
        seconds = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            model = kw["model"]
            named = dict(model.named_parameters())
            base = next(n for n in named if "q_proj" in n and "lora_" not in n)
            lora = next((n for n in named if "lora_" in n), None)
            self.device = str(named[base].device)
            kind = type(named[base]).__name__  # Params4bit under QLoRA
            self.base = str(named[base].dtype).removeprefix("torch.")
            self.base += f" {kind}" if kind != "Parameter" else ""
            self.lora = str(named[lora].dtype).removeprefix("torch.") if lora else "-"
            self.hook = model.register_forward_pre_hook(self.count, with_kwargs=True)

        def count(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            if module.training:
                self.counted += int(kwargs["attention_mask"].sum())

        def on_step_begin(self, *a: Any, **kw: Any) -> None:
            sync()
            self.started, self.counted_before = time.perf_counter(), self.counted

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sync()
            if state.global_step > 1:
                self.seconds += time.perf_counter() - self.started
                self.tokens += self.counted - self.counted_before

        def on_train_end(self, *a: Any, **kw: Any) -> None:
            self.hook.remove()

    return Meter()


def train(model_dir: Path, work: Path, name: str, steps: int, cuda: bool) -> dict[str, Any]:
    """A few steps of the train stage on the toy dataset; raises Skipped where it cannot run."""
    from mapd.config import RunConfig
    from mapd.errors import MapdError
    from mapd.stages.train.model import check_quantize
    from mapd.stages.train.stage import run

    run_dir = work / f"run-{name}"
    settings = {"max_steps": steps, "batch_size": 4, "max_length": 128, "lr": 5e-3}
    cfg = RunConfig.model_validate(
        {
            "name": name,
            "output_dir": str(run_dir),
            "task": {"name": "gsm8k"},
            "student": {"model": str(model_dir)},
            "teachers": [  # never called in training; the config needs two
                {"name": t, "model": t, "base_url": "http://localhost:1/v1"} for t in "ab"
            ],
            "train": settings | {"warmup_ratio": 0.0, "lr_scheduler": "constant"} | TRAININGS[name],
        }
    )
    try:
        check_quantize(cfg.train)
    except MapdError as exc:
        raise Skipped(exc.message) from None
    data = run_dir / "dataset" / "train.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(e.to_json() + "\n" for e in toy_examples(24)), encoding="utf-8")
    meter = make_meter()
    reset_peak(cuda)
    manifest = run(cfg, run_dir, callbacks=[meter])
    return {
        "device": meter.device,
        "dtype": manifest["precision"],
        "base_weight": meter.base,
        "lora_weight": meter.lora,
        "steps": manifest["steps"],
        "loss": manifest["final_losses"].get("loss"),
        "tokens": meter.tokens,
        "seconds": round(meter.seconds, 3),
        "tokens_per_s": round(meter.tokens / meter.seconds, 1) if meter.seconds else None,
        "peak_mib": round(peak_mib(cuda), 1),
    }


class Skipped(Exception):
    """A check that cannot run on this machine (QLoRA without CUDA or bitsandbytes)."""


def attempt(what: Any, *args: Any) -> dict[str, Any]:
    """`what(*args)` with its status: ok, skipped (and why) or error (traceback on stderr)."""
    try:
        return {"status": "ok"} | what(*args)
    except Skipped as exc:
        return {"status": "skipped", "why": str(exc)}
    except Exception as exc:
        traceback.print_exc()
        return {"status": "error", "why": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def table(header: str, rows: dict[str, dict[str, Any]], identical: int) -> str:
    columns = ("device", "dtype", "base_weight", "lora_weight", "tokens_per_s", "peak_mib")
    lines = [header, f"{'run':<8}" + "".join(f"{c:>20}" for c in columns)]
    for name, row in rows.items():
        if row["status"] != "ok":
            lines.append(f"{name}: {row['status']} ({row['why']})")
            continue
        cells = (str(row.get(c, "-")) for c in columns)
        lines.append(f"{name:<8}" + "".join(f"{c:>20}" for c in cells))
    memory = "peak MiB: torch allocated" if "cuda" in header else "peak MiB: process RSS"
    lines.append(f"greedy texts: {identical} of {PROMPTS} identical between refill and padded")
    refill, padded = rows["refill"], rows["padded"]
    if refill["status"] == padded["status"] == "ok":
        ratio = refill["tokens_per_s"] / padded["tokens_per_s"]
        lines.append(f"generation tokens/s refill/padded: {ratio:.2f}x; {memory}")
    return "\n".join(lines)


def main() -> None:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if available")
    parser.add_argument("--steps", type=int, default=6, help="training steps of each method")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_check.json")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch: training follows it too
    if importlib.util.find_spec("mapd") is None:
        sys.path.insert(0, str(ROOT / "src"))
    import torch
    import transformers

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    cuda = device == "cuda"
    name = torch.cuda.get_device_name() if cuda else "cpu"
    header = f"gpu_check on {device} ({name}), torch {torch.__version__}, "
    header += f"transformers {transformers.__version__}"
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        os.environ.update(HF_HUB_OFFLINE="1", MAPD_HOME=str(Path(tmp) / "home"))
        model_dir = build_tiny_model(Path(tmp) / "model")
        prompts = [e.input for e in toy_examples(PROMPTS // 2, seed=2)]
        rows = {b: attempt(generate, model_dir, device, b, prompts) for b in ("refill", "padded")}
        for method in TRAININGS:
            rows[method] = attempt(train, model_dir, Path(tmp), method, args.steps, cuda)
    texts = [rows[b].pop("texts", []) for b in ("refill", "padded")]
    pairs = list(zip(*texts, strict=False))  # none where an engine failed
    identical = sum(a == b for a, b in pairs)
    print(table(header, rows, identical))
    result = {"header": header, "identical": identical, "prompts": PROMPTS, "runs": rows}
    result["differing"] = [
        {"prompt": i, "refill": a, "padded": b} for i, (a, b) in enumerate(pairs) if a != b
    ]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wall {result['wall_s']} s; wrote {args.out}")
    sys.exit(1 if any(r["status"] == "error" for r in rows.values()) else 0)


if __name__ == "__main__":
    main()

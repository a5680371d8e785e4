"""The model repo of `mapd push`: the trained adapter (or merged model) and its card.

`write_model_folder(facts, out, repo, merged)` writes `out/` as the repo will hold it: the
files of `student/adapter/` (or `student/merged/`), a README.md whose metadata names the
base model, the dataset repo and a `model-index` with base and trained accuracy, and
`.eval_results/<task>.yaml`, the Hub's newer format for the same figure (written when the
task has a Hub dataset id: the format links a result to a benchmark dataset on the Hub).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, EvalResultEntry, ModelCardData, eval_result_entries_to_yaml

from mapd.errors import MapdError
from mapd.push.facts import RunFacts
from mapd.rundir import write_text_atomic

# made by transformers and peft for their own use: a pickle of training arguments that
# holds local paths, and peft's placeholder card, which ours replaces
LEFT_OUT = {"training_args.bin", "README.md"}
TRAINING_KEYS = ("method", "precision", "prompt_format", "alpha", "max_length", "steps", "epochs")


def student_folder(facts: RunFacts, merged: bool) -> Path:
    """The folder to upload; MapdError when the run has none (the caller pushes data only)."""
    training = facts.training
    student = facts.run_dir / "student"
    if not training:
        raise MapdError(
            f"no trained student in {student} (student/manifest.json is missing)",
            "train it with `mapd train CONFIG`, then push again",
        )
    name = training.get("merged_dir") if merged else training.get("model_dir")
    if merged and not name:
        raise MapdError(
            f"{student} holds no merged model",
            "merge the adapter with `mapd train RUN_DIR/config.yaml train.merge=true` "
            "(it does not train again), or push the adapter without --merged",
        )
    folder = student / str(name)
    if not folder.is_dir():
        raise MapdError(f"{folder} is missing", "train the student again with `mapd train`")
    return folder


def eval_results(facts: RunFacts) -> list[EvalResult]:
    """model-index entries: the trained student's accuracy, then the untrained base's."""
    results = []
    for label, metric, title in (
        ("trained", "accuracy", "accuracy"),
        ("base", "base_model_accuracy", "accuracy of the untrained base model"),
    ):
        m = facts.evals.get(label) or {}
        if not isinstance(m.get("accuracy"), int | float):
            continue
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=facts.task_hub_id or facts.task,
                dataset_name=facts.task,
                dataset_split=str(m.get("split", "test")),
                metric_type=metric,
                metric_name=f"{title} (n={m.get('n')})",
                metric_value=float(m["accuracy"]),
                metric_args={"questions": m.get("n"), "samples": m.get("samples", 1)},
            )
        )
    return results


def eval_results_yaml(facts: RunFacts) -> str | None:
    """`.eval_results/<task>.yaml`: the trained accuracy in percent, the base one in notes."""
    trained, base = facts.evals.get("trained") or {}, facts.evals.get("base") or {}
    if not facts.task_hub_id or not isinstance(trained.get("accuracy"), int | float):
        return None
    notes = f"mapd eval, {trained.get('split', 'test')} split, n={trained.get('n')} questions"
    if isinstance(base.get("accuracy"), int | float):
        notes += f"; untrained base model {100 * base['accuracy']:.1f}"
    entry = EvalResultEntry(
        dataset_id=facts.task_hub_id,
        task_id=facts.task,
        value=round(100 * float(trained["accuracy"]), 2),
        notes=notes,
    )
    return yaml.safe_dump(eval_result_entries_to_yaml([entry]), sort_keys=False)


def card_data(facts: RunFacts, repo: str, merged: bool) -> ModelCardData:
    training = facts.training or {}
    return ModelCardData(
        model_name=repo.split("/")[1],
        base_model=str(training.get("base_model")),
        library_name="transformers" if merged else "peft",
        datasets=[f"{repo}-data"],
        pipeline_tag="text-generation",
        tags=["mapd", "distillation", "chain-of-thought"] + ([] if merged else ["lora"]),
        eval_results=eval_results(facts) or None,
    )


def accuracy_md(facts: RunFacts) -> list[str]:
    lines = ["## Evaluation", "", "| model | split | questions | accuracy |", "|---|---|---:|---:|"]
    for label in ("base", "trained"):
        m = facts.evals.get(label) or {}
        if isinstance(m.get("accuracy"), int | float):
            lines.append(f"| {label} | {m.get('split')} | {m.get('n')} | {m['accuracy']:.1%} |")
    if len(lines) == 4:
        lines.append("| – | – | – | not evaluated |")
    return [*lines, ""]


def model_card(facts: RunFacts, repo: str, merged: bool) -> str:
    training = facts.training or {}
    settings = {k: training[k] for k in TRAINING_KEYS if k in training}
    settings["examples"] = training.get("examples")
    load = (
        [
            "from peft import AutoPeftModelForCausalLM",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{repo}")',
        ]
        if not merged
        else [
            "from transformers import AutoModelForCausalLM",
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
        ]
    )
    body = [
        f"# {repo.split('/')[1]}",
        "",
        f"`{training.get('base_model')}` fine-tuned by mapd (Mistake-Aware Peer-Review "
        f"Distillation) on its own mistakes on `{facts.task}`, corrected by a committee of "
        f"{len(facts.teachers)} teachers whose rationales were peer-reviewed. Training data "
        f"and every review decision: [{repo}-data](https://huggingface.co/datasets/{repo}-data).",
        "",
        "```python",
        *load,
        "```",
        "",
        *accuracy_md(facts),
        "## Training",
        "",
        "```yaml",
        yaml.safe_dump(settings, sort_keys=False).rstrip(),
        "```",
        "",
        *facts.markdown_sections(),
    ]
    header = card_data(facts, repo, merged).to_yaml()
    return "---\n" + header + "\n---\n\n" + "\n".join(body) + "\n"


def copy_student(source: Path, out: Path, base_model: str | None) -> None:
    """Copy the student's files; the adapter names its base by the card's id, not a path."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.name not in LEFT_OUT:
            target = out / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    config = out / "adapter_config.json"
    if config.exists() and base_model:
        data: dict[str, Any] = json.loads(config.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = base_model
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_model_folder(facts: RunFacts, out: Path, repo: str, merged: bool) -> Path:
    """Write the model repo's files into `out`; the student folder they came from."""
    source = student_folder(facts, merged)
    copy_student(source, out, (facts.training or {}).get("base_model"))
    write_text_atomic(out / "README.md", model_card(facts, repo, merged))
    if (results := eval_results_yaml(facts)) is not None:
        write_text_atomic(out / ".eval_results" / f"{facts.task}.yaml", results)
    return source

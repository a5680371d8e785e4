"""The `mapd` command line: thin commands, each calling one library function.

Errors meant for users (MapdError) are printed in one or two lines with exit code 2.
"""

from __future__ import annotations

import difflib
import errno
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from mapd import __version__
from mapd.errors import MapdError

if TYPE_CHECKING:
    from mapd.config import RunConfig

app = typer.Typer(
    name="mapd",
    help="Mistake-Aware Peer-Review Distillation: teach a small student model from a "
    "committee of teacher LLMs.\n\nExample: mapd run configs/demo.yaml",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

CONFIG_ARG = typer.Argument(..., help="Run config (YAML).", show_default=False)
OVERRIDES_ARG = typer.Argument(None, help="KEY=VALUE overrides with dotted keys.")


def _run_folder(path: Path) -> Path:
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise typer.BadParameter(
            f"{path} {what}; give a run folder (its output_dir, e.g. runs/demo)"
        )
    return path


RUN_DIR_ARG = typer.Argument(
    ..., help="The run folder (a run's output_dir).", show_default=False, callback=_run_folder
)


def _version(value: bool) -> None:
    if value:
        out.print(f"mapd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Mistake-Aware Peer-Review Distillation."""


@app.command()
def validate(
    config: Path = CONFIG_ARG,
    overrides: list[str] = OVERRIDES_ARG,
    check: bool = typer.Option(
        False,
        "--check",
        help="Also check every endpoint: key variables set, servers answering, models present.",
    ),
) -> None:
    """Check a run config and list every problem at once.

    Example: mapd validate configs/paper/gsm8k.yaml train.lr=2e-5 teachers.0.model=gpt-4o-mini --check
    """
    from mapd.ablation import row_configs
    from mapd.config import load_config
    from mapd.preflight import check_endpoints, require_endpoints
    from mapd.tasks import check_task

    cfg = load_config(config, overrides or [])
    check_task(cfg.task)
    rows = row_configs(cfg)  # `mapd ablate`'s rows and variants, checked now
    teachers = ", ".join(
        f"{t.name} ({t.backend}{f', {t.batch_kind} batch' if t.batch_kind else ''})"
        for t in cfg.teachers
    )
    out.print(
        f"{config}: valid. task {cfg.task.name}, student {cfg.student.model}"
        f"{f' (weights {cfg.student.weights})' if cfg.student.weights else ''}, "
        f"teachers {teachers}, output {cfg.run_dir}",
        highlight=False,
    )
    if cfg.ablation.model_fields_set:
        names, seeds = {name for name, _ in rows}, {seed for _, seed in rows}
        out.print(
            f"ablation: {len(names)} trained rows × {len(seeds)} seed(s) checked", highlight=False
        )
    if not check:
        out.print("(`--check` also checks keys, servers and models)", highlight=False)
        return
    checks = check_endpoints(cfg)
    for found in checks:
        out.print(f"  {found.line()}", highlight=False, markup=False)
    require_endpoints(checks, shown=True)


@app.command()
def train(
    config: Path = CONFIG_ARG,
    overrides: list[str] = OVERRIDES_ARG,
) -> None:
    """Fine-tune the student on the run folder's dataset/train.jsonl (LoRA or full) into student/.

    Re-running after a kill resumes from the last checkpoint in student/checkpoints/.
    Several processes or machines: accelerate launch --config_file
    configs/accelerate/ddp.yaml -m mapd train CONFIG (without GPUs: accelerate launch
    --multi_gpu --num_processes 2 -m mapd train CONFIG; its --cpu flag starts one process).

    Example: mapd train configs/demo.yaml train.method=full train.lr=1e-5 train.alpha=0.5
    """
    from mapd.config import load_config
    from mapd.preflight import check_weights, require_endpoints
    from mapd.stages.pipeline import train_student

    cfg = load_config(config, overrides or [])
    if cfg.student.backend == "openai":  # a served student is trained from its weights
        require_endpoints([check_weights(cfg.student)])
    _say_saved(config, overrides)
    train_student(cfg)


def _say_saved(config: Path, overrides: list[str] | None) -> None:
    """Every command records the settings it ran with in its run folder's config.yaml; when
    that is the file given, its overrides are kept for later commands, and this says so."""
    from mapd.config import saved_overrides

    for key, before, after in saved_overrides(config, overrides or []):
        note = (
            f"note: {config} is this run folder's record of its settings, so "
            f"{key}={_yaml_value(after)} is saved into it and kept for later runs of it "
            f"(undo with {key}={_yaml_value(before)})"
        )
        console.print(escape(note))


def _run_stages(
    config: Path,
    overrides: list[str] | None,
    start: str | None,
    until: str | None,
    retrain: bool = True,
) -> None:
    import asyncio
    import time

    from mapd.config import load_config
    from mapd.stages.pipeline import check_student, run_pipeline, select_stages
    from mapd.stages.summary import print_summary

    cfg = load_config(config, overrides or [])
    stages = select_stages(start, until)  # a wrong --from/--until before the notes
    check_student(cfg, stages, retrain, config)  # before the note: a refusal saves nothing
    _say_saved(config, overrides)
    _check_endpoints(cfg, start, until)
    if "train" in stages and cfg.train.args and not _trained_as_configured(cfg):
        # checked by TrainingArguments itself now, not after the teachers are paid
        from mapd.stages.train.stage import training_args

        training_args(cfg, cfg.run_dir / "student" / "checkpoints")
    started = time.time()
    summaries = asyncio.run(run_pipeline(cfg, start=start, until=until, retrain=retrain))
    print_summary(cfg, summaries, started, out)
    out.print(f"run folder: {cfg.run_dir}")


def _trained_as_configured(cfg: RunConfig) -> bool:
    """Whether the train stage is finished with these settings (it will not run)."""
    from mapd.stages.pipeline import is_current

    return is_current(cfg, cfg.run_dir, "train")


def _check_endpoints(cfg: RunConfig, start: str | None, until: str | None) -> None:
    """Keys, servers and models checked before the exam, not found missing after it."""
    from mapd.preflight import check_before_run, require_endpoints
    from mapd.stages.pipeline import select_stages

    checks = check_before_run(cfg, select_stages(start, until))
    for found in checks:
        if found.worth_saying:
            console.print(f"note: {found.line()}", highlight=False, markup=False)
    require_endpoints(checks)


def _yaml_value(value: object) -> str:
    """A value as it is written on the command line (null, true, 200, [a, b])."""
    import yaml

    return (
        yaml.safe_dump(value, default_flow_style=True, width=10**6)
        .strip()
        .removesuffix("...")
        .strip()
    )


@app.command()
def run(
    config: Path = CONFIG_ARG,
    overrides: list[str] = OVERRIDES_ARG,
    start: str = typer.Option(
        None,
        "--from",
        help="Re-run from this stage on: exam, teach, review, build, train, eval, report.",
    ),
    until: str = typer.Option(None, "--until", help="Stop after this stage (as for --from)."),
) -> None:
    """Run the whole MAPD loop: exam, teach, review, build (and the later stages).

    Finished stages whose inputs and settings are unchanged are skipped, and every answered
    call comes from the cache, so re-running after a crash or a kill resumes where it stopped.

    Example: mapd run configs/demo.yaml --until build teachers.0.sampling.temperature=0.5
    """
    _run_stages(config, overrides, start, until)


@app.command()
def exam(config: Path = CONFIG_ARG, overrides: list[str] = OVERRIDES_ARG) -> None:
    """The student answers the training questions; wrong answers become mistakes.

    Writes attempts.jsonl, mistakes.jsonl and exam.json in the run folder.

    Example: mapd exam configs/demo.yaml task.limit=50
    """
    _run_stages(config, overrides, None, "exam")


@app.command()
def teach(config: Path = CONFIG_ARG, overrides: list[str] = OVERRIDES_ARG) -> None:
    """Every teacher explains every mistake and writes its own rationale (runs exam first if needed).

    Writes feedback.jsonl and rationales.jsonl in the run folder.

    Example: mapd teach configs/paper/svamp.yaml
    """
    _run_stages(config, overrides, None, "teach")


@app.command()
def review(config: Path = CONFIG_ARG, overrides: list[str] = OVERRIDES_ARG) -> None:
    """Teachers score each other's rationales; accept or reject each one (runs earlier stages if needed).

    Writes reviews.jsonl, decisions.jsonl and review.json in the run folder.

    Example: mapd review configs/paper/svamp.yaml review.aggregate=median
    """
    _run_stages(config, overrides, None, "review")


@app.command()
def build(config: Path = CONFIG_ARG, overrides: list[str] = OVERRIDES_ARG) -> None:
    """Build the training set from mistakes, feedback and accepted rationales.

    Writes dataset/train.jsonl plus TRL, LLaMA-Factory and `datasets` exports.

    Example: mapd build runs/svamp-release/config.yaml review.require_correct_answer=true
    """
    _run_stages(config, overrides, None, "build")


@app.command("eval")
def eval_(
    config: Path = CONFIG_ARG,
    overrides: list[str] = OVERRIDES_ARG,
    base_only: bool = typer.Option(
        False, "--base-only", help="Only the untrained student: no training needed."
    ),
) -> None:
    """Accuracy of the untrained and the trained student on the test split.

    Evaluates the student that exists in student/ and never trains it again: when the config
    says other settings than it was trained with, eval stops before any work and names them
    (`mapd train` trains again; the overrides it names evaluate the student as it is). With
    no trained student yet, the earlier stages run first, training included.

    Writes eval/<label>/predictions.jsonl and metrics.json; labels base and trained.

    Example: mapd eval runs/demo/config.yaml eval.limit=50 --base-only
    """
    if not base_only:
        _run_stages(config, overrides, None, "eval", retrain=False)
        return
    import asyncio

    from mapd.config import dump_run_config, load_config
    from mapd.rundir import run_lock, write_text_atomic
    from mapd.stages.evaluate import eval_questions, evaluate
    from mapd.stages.report.collect import answers_cut_off_lines

    cfg = load_config(config, overrides or [])
    _say_saved(config, overrides)
    with run_lock(cfg.run_dir):
        write_text_atomic(cfg.run_dir / "config.yaml", dump_run_config(cfg))
        metrics = asyncio.run(evaluate(cfg, cfg.run_dir, "base", cfg.student, eval_questions(cfg)))
    out.print(
        f"base accuracy {metrics['accuracy']} on {metrics['n']} questions; "
        f"{cfg.run_dir / 'eval' / 'base'}"
    )
    for line in answers_cut_off_lines(None, {"base": metrics}):
        out.print(line, highlight=False)


@app.command()
def ablate(
    config: Path = CONFIG_ARG,
    overrides: list[str] = OVERRIDES_ARG,
    seeds: str | None = typer.Option(
        None, "--seeds", help="Train every row once per seed, e.g. 731,1 (ablation.seeds)."
    ),
    rows: str | None = typer.Option(
        None, "--rows", help="Only these rows, e.g. untrained,mapd (ablation.rows)."
    ),
) -> None:
    """The paper's comparison table from one config: untrained, single teachers, no review, MAPD, alpha 0, answer check.

    Every row shares the cached exam, teaching and reviews (or, for a folder made by
    mapd import-release, the imported ones) and differs in build, train and eval. Each row
    gets its accuracy with a 95 % Wilson interval and McNemar's exact test against MAPD;
    with several seeds, each seed and the pooled figure. Finished rows are skipped, so a
    killed ablation resumes. Writes ablation/ablation.md and .csv.

    Example: mapd ablate runs/svamp-release/config.yaml --seeds 731,1 --rows untrained,mapd

    A recipe of your own as one more row, compared with MAPD like the others:
    mapd ablate runs/svamp-release/config.yaml 'ablation.variants={pick-all: [dataset.pick=all]}'
    """
    import asyncio

    from mapd.ablation import run_ablation
    from mapd.config import load_config

    overrides = list(overrides or [])
    if seeds is not None:
        try:
            overrides.append(f"ablation.seeds={[int(s) for s in seeds.split(',')]}")
        except ValueError:
            raise MapdError(f"--seeds {seeds!r}: not whole numbers", "e.g. --seeds 731,1") from None
    if rows is not None:
        overrides.append(f"ablation.rows={[r.strip() for r in rows.split(',')]}")
    cfg = load_config(config, overrides)
    root = asyncio.run(run_ablation(cfg))
    out.print((root / "ablation.md").read_text(encoding="utf-8"))
    out.print(f"written: {root / 'ablation.md'}, {root / 'ablation.csv'}")


@app.command("import-release")
def import_release(
    files: list[Path] = typer.Argument(..., help="The release's *_round0.json files."),
    task: str = typer.Option(..., "--task", help="svamp, gsm8k or strategyqa."),
    output: Path = typer.Option(..., "--output", help="Run folder to create."),
) -> None:
    """Import the paper's released mistakes, feedback, rationales and review scores into a run folder.

    The files are in the data/ folder of the authors' repository (MIT licence),
    github.com/zhuochunli/Learn-from-Committee: SVAMP (false, feedback, rationale) and
    StrategyQA (false).

    Example: mapd import-release --task svamp --output runs/svamp-release data/*_svamp_*_round0.json
    """
    import shutil

    from mapd.release import import_release as do_import
    from mapd.rundir import run_lock

    made = not output.exists()
    if output.is_dir() and any(output.iterdir()):
        raise MapdError(
            f"{output} already holds files: an import would replace its mistakes, feedback "
            "and config and leave the rest mixed in",
            "give --output a new folder (or delete this one first)",
        )
    try:
        with run_lock(output):
            counts = do_import(task, files, output)
    except MapdError:
        if made:  # a failed import leaves no half-made run folder behind
            shutil.rmtree(output, ignore_errors=True)
        raise
    out.print(
        f"imported {counts['mistakes']} mistakes, {counts['feedback']} feedback, "
        f"{counts['rationales']} rationales, {counts['reviews']} reviews into {output}\n"
        f"next: mapd build {output / 'config.yaml'}"
    )


@app.command()
def settings(
    prefix: str = typer.Argument("", help="Only the settings under this key, e.g. train."),
    markdown: bool = typer.Option(False, "--markdown", help="As docs/config.md's table."),
) -> None:
    """List every config setting with its type, default and what it does.

    In a pipe or a file, one whole line per setting: its name, type, default and help,
    tab-separated.

    Example: mapd settings train.lora
    """
    from rich.table import Table

    from mapd.settings_doc import all_settings, settings_markdown

    if markdown:
        out.print(settings_markdown(), end="", markup=False, highlight=False, soft_wrap=True)
        return
    key = re.sub(r"\.\d+(?=\.|$)", ".N", prefix)  # teachers.0.limits: teachers.N.limits
    chosen = [s for s in all_settings() if s.path == key or s.path.startswith(key + ".") or not key]
    if not chosen:
        paths = [s.path for s in all_settings()]
        ends = [p for p in paths if p.endswith("." + key) or p.split(".")[-1] == key]
        near = ends or difflib.get_close_matches(key, paths, n=3, cutoff=0.6)
        raise MapdError(
            f"no setting {prefix!r} and none under it",
            f"did you mean {' or '.join(near[:3])}?" if near else "e.g. mapd settings train",
        )
    if not out.is_terminal:  # a pipe or a file: each setting whole on one line, tab-separated
        for s in chosen:
            typer.echo("\t".join((s.path, s.kind, s.default, s.help)))
        return
    table = Table()
    # every cell wraps, none is cut; the name to type stays whole while the others have room
    longest = max(len(s.path) for s in chosen)
    table.add_column("setting", no_wrap=out.width >= longest + 40, overflow="fold")
    for name in ("type", "default", "what it does"):
        table.add_column(name, overflow="fold")
    for s in chosen:
        table.add_row(*map(escape, (s.path, s.kind, s.default, s.help)))
    out.print(table)


@app.command()
def tasks() -> None:
    """List the tasks, their answer types, sources and default hub datasets.

    Example: mapd tasks
    """
    from rich.table import Table

    from mapd.tasks import TASKS

    table = Table("task", "answer", "sources", "hub dataset")
    for task in TASKS.values():
        hub = f"{task.hub_id} ({task.hub_config})" if task.hub_config else (task.hub_id or "-")
        table.add_row(task.name, task.answer_type or "(config)", ", ".join(task.sources), hub)
    out.print(table)
    for task in TASKS.values():
        out.print(f"{task.name}: {task.description}", highlight=False)


@app.command()
def score(
    task: str = typer.Option(..., "--task", help="Task name (see `mapd tasks`)."),
    input: Path = typer.Option(..., "--input", help="JSONL: output plus answer or id per line."),
    output: Path | None = typer.Option(None, "--output", help="Write scored lines here."),
    path: Path | None = typer.Option(
        None, "--path", help="Local copy of the dataset, to look up gold answers by id."
    ),
    source: str | None = typer.Option(
        None, "--source", help="Where gold answers come from: hub, local or reasoning_gym."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Run config whose task section says where the data is."
    ),
    answer_type: str | None = typer.Option(
        None, "--answer-type", help="jsonl task: number, yesno, choice or text."
    ),
) -> None:
    """Score model outputs: extract each final answer and compare it with the gold answer.

    Example: mapd score --task gsm8k --input outputs.jsonl --path data/gsm8k --output scored.jsonl
    """
    from pydantic import ValidationError

    from mapd.config import TaskConfig, format_errors, load_config
    from mapd.scoring import score_file

    if answer_type not in (None, "number", "yesno", "choice", "text"):
        raise MapdError(
            f"--answer-type {answer_type!r} is not known", "use number, yesno, choice or text"
        )
    seed = 731
    task_cfg = None
    if config is not None:
        run = load_config(config)
        task_cfg, seed = run.task, run.seed
    elif path is not None or source is not None:
        try:
            task_cfg = TaskConfig(
                name=task,
                source=source or "local",
                path=str(path) if path else None,
                answer_type=answer_type,
            )
        except ValidationError as exc:
            flags = {"name": "--task", "source": "--source", "path": "--path", "config": "--task"}
            named = (line.partition(":") for line in format_errors(exc))
            problems = "; ".join(f"{flags.get(k, k)}:{rest}" for k, _, rest in named)
            raise MapdError(problems, "see `mapd tasks` and `mapd score --help`") from None
    report = score_file(task, input, output, task_cfg, answer_type, seed)  # type: ignore[arg-type]
    line = f"{input}: {report.correct}/{report.total} correct ({report.accuracy:.1%})"
    if report.no_answer:
        line += f", {report.no_answer} without an answer"
    out.print(line)
    if report.lm_eval_strict is not None:
        out.print(
            f"lm-eval gsm8k: strict-match {report.lm_eval_strict:.1%}, "
            f"flexible-extract {report.lm_eval_flexible:.1%}"
        )
    if output is not None:
        out.print(f"wrote {output}")


@app.command("report")
def report_command(
    run_dir: Path = RUN_DIR_ARG,
    format: str = typer.Option(
        "html", "--format", help="html: write RUN_DIR/report.html; md: print Markdown."
    ),
) -> None:
    """Write RUN_DIR/report.html (one self-contained page), or print a Markdown summary.

    The page shows the settings, calls and cost per stage, the funnel from questions to
    training examples, acceptance and scores per teacher, reviewer agreement, where review
    and answer check disagree, accuracy before and after, and every mistake, searchable.

    Example: mapd report runs/demo --format md
    """
    from mapd.stages.report import collect_run, save_report
    from mapd.stages.report.markdown import render_markdown

    if format not in ("md", "html"):
        raise MapdError(f"--format {format!r} is not known", "use --format html or --format md")
    report = collect_run(run_dir)
    if format == "md":
        out.print(render_markdown(report), markup=False, highlight=False, end="")
    else:
        out.print(f"wrote {save_report(report)}")
    for note in report.left_out:
        console.print(f"warning: {note}", highlight=False, markup=False)


@app.command()
def push(
    run_dir: Path = RUN_DIR_ARG,
    repo: str = typer.Option(
        ..., "--repo", help="ORG/NAME: the model repo; the dataset goes to ORG/NAME-data."
    ),
    private: bool = typer.Option(False, "--private", help="Create both repos private."),
    token_env: str = typer.Option(
        "HF_TOKEN", "--token-env", help="The variable that holds a Hub write token."
    ),
    merged: bool = typer.Option(
        False, "--merged", help="Push student/merged/ (train.merge=true) instead of the adapter."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Upload nothing; write what would be uploaded to --output."
    ),
    output: Path | None = typer.Option(
        None, "--output", help="With --dry-run: write DIR/data/ and DIR/model/ (replaced)."
    ),
) -> None:
    """Put the run's dataset and trained student on the Hugging Face Hub, with cards.

    ORG/NAME-data gets the training examples and every review decision (Parquet, two
    configurations) with a card holding the funnel, acceptance per teacher, cost and config;
    ORG/NAME gets the adapter with a card naming the base model and the dataset, and the
    accuracy before and after training. Pushing again uploads only what changed.

    Example: mapd push runs/svamp --repo my-org/svamp-mapd --dry-run --output /tmp/push
    """
    from mapd.push import push_run

    if dry_run != (output is not None):
        raise MapdError(
            "--dry-run and --output go together",
            "mapd push RUN_DIR --repo ORG/NAME --dry-run --output DIR writes without uploading",
        )
    push_run(
        run_dir,
        repo,
        token_env=token_env,
        private=private,
        merged=merged,
        output=output,
        say=lambda line: out.print(line, highlight=False, markup=False),
    )


cache_app = typer.Typer(
    help="The response cache in $MAPD_HOME.\n\nExample: mapd cache stats",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(cache_app, name="cache")


@cache_app.command("stats")
def cache_stats_command() -> None:
    """Show how many replies the cache holds, per backend and model, and its size on disk.

    Example: mapd cache stats
    """
    from mapd.llm import cache_stats, open_store

    with open_store() as store:
        stats = cache_stats(store)
    out.print(f"{stats.path}: {stats.replies} cached replies, {stats.size_bytes / 1e6:.1f} MB")
    for row in stats.by_model:
        out.print(
            f"  {row.backend:<13} {row.model:<40} {row.replies:>8} replies "
            f"{row.tokens:>12,} tokens",
            highlight=False,
        )


@cache_app.command("clear")
def cache_clear_command(
    model: str = typer.Option(None, "--model", help="Only this model's replies."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete cached replies (all, or one model's); the call ledger is kept.

    Example: mapd cache clear --model gpt-4o-mini --yes
    """
    from mapd.llm import cache_stats, clear_cache, open_store

    what = f"cached replies of {model}" if model else "all cached replies"
    if not yes and not sys.stdin.isatty():
        raise MapdError(
            "nothing deleted: no terminal to confirm at", "pass --yes to delete without asking"
        )
    sure = yes or typer.confirm(f"Delete {what}? Re-running will pay for them again")
    if not sure:
        console.print("nothing deleted", highlight=False)
        raise typer.Exit(1)
    with open_store() as store:
        removed = clear_cache(store, model)
        held = sorted({m.model for m in cache_stats(store).by_model})
    if model and not removed:
        raise MapdError(
            f"no cached replies of model {model!r}",
            f"models in the cache: {', '.join(held) or 'none'} (mapd cache stats)",
        )
    out.print(f"deleted {removed} cached replies")


@app.command()
def ledger(
    run_dir: Path = RUN_DIR_ARG,
) -> None:
    """Print LLM calls, tokens, cache hits and cost per stage and endpoint of a run, with the
    reasoning tokens, the replies cut off at max_tokens, the attempts that timed out and
    (when there are any) the connections given up as stalled.

    Example: mapd ledger runs/demo
    """
    from mapd.llm import ledger_totals, open_store

    with open_store() as store:
        rows = ledger_totals(store, run_dir)
    stalled = any(r.stalls for r in rows)  # an overloaded server: rare, so shown only then

    def stalls(cell: str | int) -> str:
        return f" {cell:>8}" if stalled else ""

    header = (
        f"{'stage':<10} {'endpoint':<16} {'calls':>7} {'cached':>7} {'failed':>6} {'batch':>7} "
        f"{'prompt tok':>11} {'output tok':>11} {'reasoning':>10} {'cut off':>8} "
        f"{'timeouts':>8}{stalls('stalled')} {'cost $':>10}"
    )
    out.print(header, highlight=False)
    for r in rows:
        out.print(
            f"{r.stage:<10} {r.endpoint:<16} {r.calls:>7} {r.cached:>7} {r.failed:>6} "
            f"{r.batched:>7} {r.prompt_tokens:>11,} {r.completion_tokens:>11,} {r.reasoning_tokens:>10,} "
            f"{r.cut_off:>8} {r.timeouts:>8}{stalls(r.stalls)} {r.cost:>10.4f}",
            highlight=False,
        )
    total = sum(r.cost for r in rows)
    calls = sum(r.calls for r in rows)
    out.print(
        f"{'total':<27} {calls:>7} {sum(r.cached for r in rows):>7} "
        f"{sum(r.failed for r in rows):>6} {sum(r.batched for r in rows):>7} "
        f"{sum(r.prompt_tokens for r in rows):>11,} "
        f"{sum(r.completion_tokens for r in rows):>11,} "
        f"{sum(r.reasoning_tokens for r in rows):>10,} {sum(r.cut_off for r in rows):>8} "
        f"{sum(r.timeouts for r in rows):>8}{stalls(sum(r.stalls for r in rows))} {total:>10.4f}",
        highlight=False,
    )
    if estimated := sum(r.estimated for r in rows):
        out.print(
            f"{estimated} calls had no usage from their endpoint: their tokens are estimated "
            "from the text (4 characters a token)",
            highlight=False,
        )


@app.command()
def batches(
    run_dir: Path = RUN_DIR_ARG,
    cancel: bool = typer.Option(
        False, "--cancel", help="Cancel the batches that have not ended (finished items are kept)."
    ),
) -> None:
    """List a run's provider batches (teachers with `batch: true` or `anthropic`): status, counts, cost.

    A batch not ended is asked of the provider now (it goes on while no run polls it); cost
    is that of collected replies. With --cancel, every batch that has not ended is cancelled
    at the provider; the next run resubmits only the unfinished items.

    Example: mapd batches runs/gsm8k-hosted --cancel
    """
    import asyncio
    import time

    from mapd.llm import open_store
    from mapd.llm.batch_records import cancel_batches, refresh_batches

    with open_store() as store:
        if cancel:
            rows, notes = asyncio.run(cancel_batches(store, run_dir)), []
        else:
            rows, notes = asyncio.run(refresh_batches(store, run_dir))
    out.print(
        f"{'batch':<32} {'endpoint':<16} {'kind':<9} {'stage':<7} {'status':<11} "
        f"{'done':>13} {'failed':>6} {'submitted':>10} {'cost $':>9}",
        highlight=False,
    )
    for r in rows:
        age = time.time() - r.submitted
        ago = f"{age / 60:.0f} min ago" if age < 7200 else f"{age / 3600:.1f} h ago"
        ago = ago if age < 3 * 86400 else f"{age / 86400:.0f} days ago"
        out.print(
            f"{r.id:<32} {r.endpoint:<16} {r.kind:<9} {r.stage:<7} {r.status:<11} "
            f"{f'{r.done}/{r.requests}':>13} {r.failed:>6} {ago:>10} {r.cost:>9.4f}",
            highlight=False,
        )
    for note in notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if any(not r.collected for r in rows):
        console.print(
            "note: cost counts collected replies; a batch not yet collected is paid at the "
            "provider all the same (the next run collects it)",
            highlight=False,
        )


def _fail(err: MapdError) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(err.message)}", highlight=False)
    if err.hint:
        console.print(f"  hint: {err.hint}", highlight=False, markup=False)
    sys.exit(2)


def _usage_error_types() -> tuple[type[Exception], ...]:
    """The usage-error base of the click that typer really raises from.

    typer 0.2x bundles its own copy of click whose exceptions are not subclasses of the
    installed click's, so both bases are caught.
    """
    import click
    import typer.core

    bundled = getattr(typer.core, "_click", click)
    return (click.ClickException, bundled.exceptions.ClickException)


def _usage_error(exc: Exception) -> NoReturn:
    """A command-line mistake in one line, and where to look, exit 2."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "mapd"
    if type(exc).__name__ == "NoArgsIsHelpError":  # its message is the whole help page
        names = ", ".join(ctx.command.list_commands(ctx))
        message, hint = (
            f"{command}: no command given ({names})",
            f"`{command} --help` explains them",
        )
    else:
        message, hint = exc.format_message(), f"`{command} --help` lists what it takes"  # type: ignore[attr-defined]
        takes_settings = ctx is not None and any(p.name == "overrides" for p in ctx.command.params)
        if type(exc).__name__ == "NoSuchOption" and takes_settings:
            hint = f"settings are dotted KEY=VALUE, e.g. task.limit=4; {hint}"
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    console.print(f"  hint: {hint}", highlight=False, markup=False)
    sys.exit(getattr(exc, "exit_code", 2))


def _given_path(filename: object) -> bool:
    """Whether `filename` is a path given on the command line, inside one or holding one: a
    user's mistake. A missing file of mapd's own making is a bug and keeps its traceback."""
    if not isinstance(filename, str | Path):
        return False
    failed = Path(filename).absolute()
    for arg in sys.argv[1:]:
        given = Path(arg.split("=", 1)[-1]).absolute()
        if failed == given or given in failed.parents or failed in given.parents:
            return True
    return False


def _interrupted() -> NoReturn:
    import shlex

    command = shlex.join(["mapd", *sys.argv[1:]])
    console.print(f"interrupted; `{command}` resumes from here", highlight=False, markup=False)
    sys.exit(130)


def main() -> None:
    """Entry point of the `mapd` console script."""
    try:
        # typer turns Ctrl-C into Exit(130), which is returned in non-standalone mode
        code = app(standalone_mode=False)
    except MapdError as err:
        _fail(err)
    except OSError as exc:
        # the places that write files say so themselves; this catches a full disk or a
        # read-only folder met anywhere else (dataset export, checkpoints, report)
        if exc.errno == errno.ENOSPC:
            _fail(
                MapdError(
                    f"disk full: {exc.filename or exc.strerror}",
                    "free some space and run again; finished stages are kept",
                )
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            _fail(
                MapdError(
                    f"cannot write {exc.filename or ''}: {exc.strerror}",
                    "choose a writable output_dir=...",
                )
            )
        missing = (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST)
        if exc.errno in missing and _given_path(exc.filename):
            _fail(MapdError(f"{exc.strerror}: {exc.filename}", "check the path given"))
        raise
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        _interrupted()
    except _usage_error_types() as exc:
        _usage_error(exc)
    if code == 130:
        _interrupted()
    sys.exit(code if isinstance(code, int) else 0)

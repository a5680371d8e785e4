"""The `mapd` command line: thin commands, each calling one library function.

Errors meant for users (MapdError) are printed in one or two lines with exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from mapd import __version__
from mapd.errors import MapdError

app = typer.Typer(
    name="mapd",
    help="Mistake-Aware Peer-Review Distillation: teach a small student model from a "
    "committee of teacher LLMs.\n\nExample: mapd run configs/demo.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

CONFIG_ARG = typer.Argument(..., help="Run config (YAML).", show_default=False)
OVERRIDES_ARG = typer.Argument(None, help="KEY=VALUE overrides with dotted keys.")


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
) -> None:
    """Check a run config and list every problem at once.

    Example: mapd validate configs/paper/gsm8k.yaml train.lr=2e-5 teachers.0.model=gpt-4o-mini
    """
    from mapd.config import load_config

    cfg = load_config(config, overrides or [])
    teachers = ", ".join(f"{t.name} ({t.backend})" for t in cfg.teachers)
    out.print(f"{config}: valid. task {cfg.task.name}, student {cfg.student.model}, "
              f"teachers {teachers}, output {cfg.run_dir}")


@app.command()
def train(
    config: Path = CONFIG_ARG,
    overrides: list[str] = OVERRIDES_ARG,
) -> None:
    """Fine-tune the student on the run folder's dataset/train.jsonl (LoRA or full) into student/.

    Re-running after a kill resumes from the last checkpoint in student/checkpoints/.
    Several processes or machines: accelerate launch --config_file
    configs/accelerate/ddp.yaml -m mapd train CONFIG.

    Example: mapd train configs/demo.yaml train.method=full train.lr=1e-5 train.alpha=0.5
    """
    from mapd.config import load_config
    from mapd.train import run

    cfg = load_config(config, overrides or [])
    run(cfg, cfg.run_dir)


def main() -> None:
    """Entry point of the `mapd` console script."""
    try:
        app(standalone_mode=False)
    except MapdError as err:
        console.print(f"[bold red]error:[/] {err.message}", highlight=False, markup=True)
        if err.hint:
            console.print(f"  hint: {err.hint}", highlight=False, markup=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("interrupted; run the same command again to resume")
        sys.exit(130)
    except Exception as exc:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise

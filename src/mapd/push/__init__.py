"""`mapd push`: share a run on the Hugging Face Hub, the dataset and the trained student.

    push_run(Path("runs/svamp"), "my-org/svamp-mapd", say=print)

writes two folders and uploads each as one commit:

- `ORG/NAME-data` (a dataset repo, `data.py`): the training examples and every review
  decision as Parquet, with a card that carries the run's funnel, acceptance per teacher,
  the teachers' models, the cost and the resolved config;
- `ORG/NAME` (a model repo, `model.py`): the adapter or merged model, with a card whose
  metadata names the base model and the dataset repo and holds the accuracy before and
  after training (`model-index`, and `.eval_results/` where the task is a Hub dataset).

With `output=DIR` nothing is uploaded: `DIR/data/` and `DIR/model/` hold exactly what
would be. Keys are read from the variable named by `token_env` and never written.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mapd.config import load_config
from mapd.errors import MapdError
from mapd.push.data import write_data_folder
from mapd.push.facts import read_facts
from mapd.push.model import write_model_folder
from mapd.push.upload import check_repo_name, hub_errors, read_token, upload_folder
from mapd.stages.pipeline import student_changes

__all__ = ["push_run"]


MARKER = ".mapd-push"  # in a folder this command wrote, so only such a folder is replaced


def _fresh(folder: Path) -> Path:
    """An empty `folder`: one written by an earlier push is replaced, any other that holds
    files is refused (`--output .` in a project with its own data/ must not lose it)."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            raise MapdError(
                f"{folder} already holds files that mapd push did not write",
                "give --output a new or empty folder",
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("written by mapd push; replaced by the next push\n")
    return folder


def _check_output(run_dir: Path, output: Path) -> None:
    inside = output.resolve() == run_dir.resolve() or run_dir.resolve() in output.resolve().parents
    if inside:
        raise MapdError(
            f"--output {output} is inside the run folder {run_dir}",
            "give --output a folder outside the run (its student/ is never written by push)",
        )


def push_run(
    run_dir: Path,
    repo: str,
    *,
    token_env: str = "HF_TOKEN",
    private: bool = False,
    merged: bool = False,
    output: Path | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Write, and unless `output` is given upload, the run's dataset and student repos.

    Raises MapdError before any upload for a bad repo name, a missing token or a run
    without a dataset; a run without a trained student gets its dataset pushed, then a
    MapdError that says only the dataset went.
    """
    check_repo_name(repo)
    if output is not None:
        _check_output(run_dir, output)
    token = None if output is not None else read_token(token_env)
    changes, _ = student_changes(load_config(run_dir / "config.yaml"), run_dir)
    if changes:  # the dataset or settings moved on after training: they would not match
        raise MapdError(
            f"the student in {run_dir / 'student'} was not trained on this folder's dataset "
            "and settings, so the two would not match on the Hub:\n  " + "\n  ".join(changes),
            f"train it again (mapd train {run_dir / 'config.yaml'}), then push",
        )
    facts = read_facts(run_dir)
    if (
        not (run_dir / "dataset" / "train.jsonl").exists()
        or not (run_dir / "decisions.jsonl").exists()
    ):
        raise MapdError(
            f"{run_dir} has no training set (dataset/train.jsonl and decisions.jsonl)",
            "finish the run up to the dataset first: mapd build CONFIG (or mapd run CONFIG)",
        )
    with tempfile.TemporaryDirectory(prefix="mapd-push-") as staging:
        root = output if output is not None else Path(staging)
        data_repo = f"{repo}-data"
        examples, decisions = write_data_folder(facts, _fresh(root / "data"), data_repo)
        model_dir, missing = _fresh(root / "model"), None
        try:
            source = write_model_folder(facts, model_dir, repo, merged)
        except MapdError as err:
            missing, source = err, None
            shutil.rmtree(model_dir)
        if token is None:
            say(
                f"dry run: nothing uploaded; {root}/data/ holds {data_repo} ({examples} examples, {decisions} decisions)"
            )
            if source is not None:
                say(f"  {root}/model/ holds {repo} (from {source})")
        else:
            for name, kind, folder in (
                (data_repo, "dataset", root / "data"),
                *([(repo, "model", model_dir)] if source is not None else []),
            ):
                with hub_errors(token_env, name):
                    url = upload_folder(
                        token,
                        name,
                        kind,
                        folder,
                        private,
                        f"mapd push of run {facts.name}",  # type: ignore[arg-type]
                    )
                say(
                    f"{kind} {name}: "
                    + (f"committed {url}" if url else "up to date, nothing uploaded")
                )
    for note in facts.notes:
        say(f"note: {note}")
    if missing is not None:
        raise MapdError(
            f"{missing.message}: {'wrote' if token is None else 'pushed'} the dataset only",
            missing.hint,
        )

"""The run folder: atomic JSON/JSONL writes, stage manifests, fingerprints and the run lock.

A stage is finished when `manifests/<stage>.json` exists, its fingerprint (the stage's
settings plus the hashes of its input files) matches, and its output files still have the
hashes recorded there. Outputs are written to a temporary file and renamed into place, and
the manifest is written last, so a kill at any moment leaves either the old files or the new
ones, never a partial line.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mapd.errors import MapdError

R = TypeVar("R", bound=BaseModel)
# written by `mapd import-release`: the run's reviews came with the paper's release
RELEASE_MARKER = "release.json"


def _disk_error(path: Path, exc: OSError) -> MapdError:
    if exc.errno == errno.ENOSPC:
        return MapdError(
            f"disk full while writing {path}",
            "free some space and run again; finished work is kept",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return MapdError(
            f"cannot write {path}: permission denied", "choose a writable output_dir=..."
        )
    return MapdError(
        f"cannot write {path}: {exc.strerror}", "check the path, or choose another output_dir=..."
    )


def _read_umask() -> int:
    """The process's umask. Reading it means setting it for a moment, process-wide, which
    would race with files other threads create; so it is read once, when mapd is imported."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the whole new one.

    The file gets the mode a plain `open` would give (0644 under umask 022), not the 0600 of
    the temporary file, so a colleague can read a shared run folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _disk_error(path, exc) from None
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _disk_error(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: Path, records: Iterable[BaseModel | dict[str, Any]]) -> int:
    lines = [
        r.model_dump_json() if isinstance(r, BaseModel) else json.dumps(r, ensure_ascii=False)
        for r in records
    ]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_json(path: Path, fix: str | None = None) -> Any:
    """The JSON in `path`; a missing or broken file is a MapdError whose fix is `fix` (by
    default: a stage's output, written again by re-running the stage)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MapdError(f"{path} not found", fix or "run the stage that writes it first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MapdError(
            f"{path} is not valid JSON: {exc}", fix or "delete it and re-run its stage"
        ) from None


def read_jsonl(path: Path, model: type[R]) -> list[R]:
    if not path.exists():
        raise MapdError(f"{path} not found", "run the stage that writes it first (mapd run ...)")
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(model.model_validate_json(line))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise MapdError(
                    f"{path} line {lineno}: not a valid {model.__name__} ({where}: {first['msg']})",
                    "delete the file and re-run its stage",
                ) from None
    return records


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def fingerprint(settings: Any, inputs: Iterable[Path]) -> str:
    """Hash of a stage's settings and the contents of its input files."""
    payload = {
        "settings": settings,
        "inputs": {p.name: file_hash(p) if p.exists() else None for p in sorted(inputs)},
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def manifest_path(run_dir: Path, stage: str) -> Path:
    return run_dir / "manifests" / f"{stage}.json"


def stage_is_done(run_dir: Path, stage: str, fp: str) -> bool:
    path = manifest_path(run_dir, stage)
    if not path.exists():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    if manifest.get("fingerprint") != fp:
        return False
    outputs = manifest.get("outputs", {})
    return all(
        (run_dir / name).exists() and file_hash(run_dir / name) == digest
        for name, digest in outputs.items()
    )


def load_manifest(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = manifest_path(run_dir, stage)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_manifest(
    run_dir: Path,
    stage: str,
    fp: str,
    outputs: list[str],
    summary: dict[str, Any],
    started: float,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record a finished stage; `config` is the resolved config it ran with (as in the run
    folder's config.yaml), so that a later command with other settings can name them."""
    manifest = {
        "stage": stage,
        "fingerprint": fp,
        "started_at": started,
        "finished_at": time.time(),
        "seconds": round(time.time() - started, 3),
        "outputs": {name: file_hash(run_dir / name) for name in outputs},
        "summary": summary,
        "config": config,
    }
    write_json(manifest_path(run_dir, stage), manifest)
    return manifest


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder; a second `mapd run` on it is refused."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = (run_dir / ".lock").open("a+")
    except OSError as exc:
        raise _disk_error(run_dir, exc) from None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise MapdError(
            f"run folder {run_dir} is in use by another mapd process",
            "wait for it to finish, or use another output_dir=...",
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        # A run killed mid-write leaves its temporary file, never renamed into place.
        for stale in run_dir.rglob(".*.tmp"):
            stale.unlink(missing_ok=True)
        yield
    finally:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()

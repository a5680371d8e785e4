"""Uploading a folder to a Hub repo with `huggingface_hub`, and its failures as one line each.

One commit per repo holds every file of the folder. The Hub answers the pre-upload
request with the hash of each file it already holds, and `huggingface_hub` leaves unchanged
files out; when nothing changed, no commit is made. So pushing again uploads nothing new,
and a push cut off between the two repos finishes the second on the next try.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from mapd.errors import MapdError

REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
TOKENS_PAGE = "https://huggingface.co/settings/tokens"


def check_repo_name(repo: str) -> str:
    if not REPO.fullmatch(repo) or repo.endswith((".git", "-data")) or ".." in repo:
        raise MapdError(
            f"--repo {repo!r} is not ORG/NAME",
            "give your user or organisation and a name, e.g. --repo my-org/svamp-mapd "
            "(the dataset goes to my-org/svamp-mapd-data)",
        )
    return repo


def read_token(token_env: str) -> str:
    """The token held by the variable `token_env`; its value is never printed or written."""
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise MapdError(
            f"no Hub token: the variable {token_env} is not set",
            f"create a write token at {TOKENS_PAGE} and `export {token_env}=...`, "
            "or name another variable with --token-env",
        )
    return token


@contextmanager
def hub_errors(token_env: str, repo: str) -> Iterator[None]:
    """Turn what the Hub or the network answers into one MapdError line."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled:
        raise MapdError(
            "HF_HUB_OFFLINE is set, so huggingface_hub makes no request",
            "unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to push; --dry-run needs no network",
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            raise MapdError(
                f"the Hub refused the token in {token_env} for {repo} (HTTP {status})",
                f"use a token with write access to the namespace ({TOKENS_PAGE})",
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MapdError(
            f"the Hub answered {repo} with an error: {first}",
            "check the repo name and your rights to it, then push again (finished files are kept)",
        ) from None
    except (httpx2.HTTPError, OSError) as exc:
        raise MapdError(
            f"could not reach the Hub ({type(exc).__name__}: {exc})",
            "check the network (or HF_ENDPOINT), then push again: what was committed is kept",
        ) from None


def upload_folder(
    token: str,
    repo: str,
    repo_type: Literal["model", "dataset"],
    folder: Path,
    private: bool,
    message: str,
) -> str | None:
    """Commit every file of `folder` to `repo`; the commit's URL, or None when nothing changed."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    api.create_repo(repo, repo_type=repo_type, private=private, exist_ok=True)
    before = api.repo_info(repo, repo_type=repo_type, revision="main").sha
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".mapd-push"  # the folder's own marker stays local
    ]
    hub_log = logging.getLogger("huggingface_hub")
    level, _ = hub_log.level, hub_log.setLevel(logging.ERROR)  # its "no files modified" warning
    try:
        info = api.create_commit(repo, operations, repo_type=repo_type, commit_message=message)
    finally:
        hub_log.setLevel(level)
    return None if info.oid == before else info.commit_url

"""LoRA adapters on a vLLM server: load one under a name made from its content, and read
where each served name was loaded from.

    name = adapter_name("smol", folder)          # smol-3f2a9c1b7d40 (sha256 of its files)
    load_adapter(endpoint, url, name, folder)    # POST {url}/load_lora_adapter
    roots = served_roots(endpoint, url)          # {"smol-3f2a9c1b7d40": "/run/student/adapter"}

vLLM answers a name with the weights it loaded under that name, whenever that was: an
adapter trained again into the same folder is still answered with the old weights. A name
made from the content cannot be answered by other weights. Loading at runtime needs a
server started with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and `--enable-lora`.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mapd.config import ModelEndpoint
from mapd.errors import MapdError
from mapd.llm.openai_backend import api_key, env_proxy

TIMEOUT = 120.0  # seconds: loading reads the adapter from disk into the engine
RUNTIME_FLAG = "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"


def adapter_digest(folder: Path) -> str:
    """sha256 of the folder's files, names and bytes in name order: the same weights give
    the same digest wherever and whenever they were saved."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def adapter_name(prefix: str, folder: Path) -> str:
    """The name an adapter is loaded under: `prefix`, then 12 hex digits of its digest."""
    return f"{prefix}-{adapter_digest(folder)[:12]}"


def _call(
    endpoint: ModelEndpoint, url: str, body: dict[str, Any] | None = None
) -> tuple[int, bytes]:
    """GET `url` (or POST `body` as JSON): the status and the body, an HTTP error's too."""
    headers = {**endpoint.headers, "Authorization": f"Bearer {api_key(endpoint)}"}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    proxy = env_proxy(url)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {})
    )
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with opener.open(request, timeout=TIMEOUT) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise MapdError(
            f"{url} is not reachable ({getattr(exc, 'reason', exc)})",
            "start the server, or correct eval.trained.base_url",
        ) from None


def server_message(body: bytes) -> str | None:
    """The message of an OpenAI-style error body (`{"error": {"message": ...}}`), or None
    for any other body, such as a route the server does not have (`{"detail": "Not Found"}`)."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("message") if isinstance(error, dict) else None


def load_adapter(endpoint: ModelEndpoint, url: str, name: str, folder: Path) -> None:
    """Load `folder` into the server at `url` as model `name` (in place when the name is
    loaded already: the same name is the same content)."""
    body = {"lora_name": name, "lora_path": str(folder), "load_inplace": True}
    status, reply = _call(endpoint, url.rstrip("/") + "/load_lora_adapter", body)
    if status == 200:
        return
    message = server_message(reply)
    if message is None:  # no such route: the server does not load adapters at runtime
        raise MapdError(
            f"eval.trained.adapter is load, but the server at {url} cannot load adapters "
            f"(POST /load_lora_adapter: HTTP {status})",
            f"start vLLM with {RUNTIME_FLAG} in its environment and --enable-lora, or load "
            "the adapter at its start (--lora-modules NAME=PATH) and set eval.trained.model: "
            "NAME, adapter: served",
        )
    raise MapdError(
        f"the server at {url} could not load the adapter {folder}: {message}",
        "the server must see this folder (same machine or a shared disk) and be started with "
        "--enable-lora and --max-lora-rank at least train.lora.r",
    )


def served_roots(endpoint: ModelEndpoint, url: str) -> dict[str, str | None]:
    """Each model the server at `url` lists (GET /models), with where it was loaded from:
    vLLM's `root` (a folder, hub id or adapter path as given), None when not said."""
    status, reply = _call(endpoint, url.rstrip("/") + "/models")
    try:
        listed = json.loads(reply)["data"] if status == 200 else []
        return {m["id"]: m.get("root") for m in listed}
    except (ValueError, KeyError, TypeError):
        return {}

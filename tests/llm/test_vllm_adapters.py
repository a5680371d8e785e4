"""Loading adapters into a vLLM server and reading their roots, against a fake vLLM that
answers the two routes as vLLM 0.32 does."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mapd.config import ModelEndpoint
from mapd.errors import MapdError
from mapd.llm.vllm_adapters import adapter_digest, adapter_name, load_adapter, served_roots


class FakeVllm:
    """`GET /v1/models` and `POST /v1/load_lora_adapter` as vLLM answers them; the load route
    exists only with `runtime` (VLLM_ALLOW_RUNTIME_LORA_UPDATING), and an adapter folder that
    does not exist is vLLM's own 404 with an error message."""

    def __init__(self, base: str = "base", adapters: dict[str, str] | None = None, runtime=True):
        self.base = base
        self.adapters = dict(adapters or {})  # name -> root (the path it was loaded from)
        self.runtime = runtime
        self.loads: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def reply(self, status: int, body: Any) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    return self.reply(404, {"detail": "Not Found"})
                base = [{"id": fake.base, "root": f"/models/{fake.base}", "parent": None}]
                loras = [
                    {"id": n, "root": r, "parent": fake.base} for n, r in fake.adapters.items()
                ]
                self.reply(200, {"object": "list", "data": base + loras})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/load_lora_adapter" or not fake.runtime:
                    return self.reply(404, {"detail": "Not Found"})
                fake.loads.append(body)
                if not Path(body["lora_path"]).is_dir():
                    message = f"Loading lora {body['lora_name']} failed: No adapter found"
                    return self.reply(404, {"error": {"message": message, "code": 404}})
                fake.adapters[body["lora_name"]] = body["lora_path"]
                self.reply(200, f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeVllm:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_adapter(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 2}')
    (folder / "adapter_model.safetensors").write_bytes(weights)
    return folder


def endpoint(base_url: str) -> ModelEndpoint:
    return ModelEndpoint(name="trained", model="base", base_url=base_url)


def test_the_digest_is_of_the_content_not_the_place_or_time(tmp_path):
    first = write_adapter(tmp_path / "a", b"weights")
    copy = write_adapter(tmp_path / "b", b"weights")
    assert adapter_digest(first) == adapter_digest(copy)
    assert adapter_name("smol", first) == f"smol-{adapter_digest(first)[:12]}"
    write_adapter(first, b"trained again")
    assert adapter_digest(first) != adapter_digest(copy)


def test_an_adapter_is_loaded_and_listed_with_its_root(tmp_path):
    folder = write_adapter(tmp_path / "adapter", b"weights")
    with FakeVllm() as server:
        load_adapter(endpoint(server.base_url), server.base_url, "smol-1", folder)
        roots = served_roots(endpoint(server.base_url), server.base_url)
    assert server.loads == [{"lora_name": "smol-1", "lora_path": str(folder), "load_inplace": True}]
    assert roots == {"base": "/models/base", "smol-1": str(folder)}


def test_a_server_without_runtime_loading_is_told_the_flag(tmp_path):
    folder = write_adapter(tmp_path / "adapter", b"weights")
    with FakeVllm(runtime=False) as server, pytest.raises(MapdError) as caught:
        load_adapter(endpoint(server.base_url), server.base_url, "smol-1", folder)
    assert "cannot load adapters" in caught.value.message
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in (caught.value.hint or "")


def test_an_adapter_the_server_cannot_find_is_its_own_message(tmp_path):
    """vLLM answers a missing folder with 404 too: its message is shown, not the flag."""
    with FakeVllm() as server, pytest.raises(MapdError) as caught:
        load_adapter(endpoint(server.base_url), server.base_url, "x", tmp_path / "elsewhere")
    assert "No adapter found" in caught.value.message
    assert "must see this folder" in (caught.value.hint or "")


def test_a_closed_port_is_a_user_error():
    url = "http://127.0.0.1:9/v1"
    with pytest.raises(MapdError, match="not reachable"):
        served_roots(endpoint(url), url)

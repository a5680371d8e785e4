"""A loopback Hugging Face Hub that speaks the few endpoints `mapd push` uses.

    with HubServer(token="hf_test") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        ...  # HfApi(endpoint=hub.url) creates repos and commits to them
        assert hub.repos["dataset/org/name-data"]["README.md"] == b"---\\n..."

It answers `POST /api/repos/create` (409 when the repo exists), `POST /api/validate-yaml`,
`GET /api/{models,datasets}/ORG/NAME/revision/main`, `POST .../preupload/main` (every file
"regular", with the git hash of the file the repo already holds, as the Hub does, so the
client leaves unchanged files out) and `POST .../commit/main` (NDJSON, base64 contents).
Every request's method and path is kept in `requests`; `token` set, a request without
`Authorization: Bearer <token>` gets 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPO_PATH = re.compile(r"/api/(models|datasets)/([^/]+/[^/]+)/(revision|preupload|commit)/main")


def git_hash(content: bytes) -> str:
    """The git blob id the Hub reports for a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubServer:
    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}  # "dataset/org/name" -> path -> content
        self.heads: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []
        self.commits: list[tuple[str, list[str]]] = []  # (repo key, paths written)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path == "/api/repos/create":
            request = json.loads(body)
            kind = request.get("type") or "model"
            key = f"{kind}/{request['organization']}/{request['name']}"
            if key in self.repos:
                return 409, {"error": "You already created this repo", "url": self.page(key)}
            self.repos[key] = {}
            return 200, {"url": self.page(key), "name": key}
        if path == "/api/validate-yaml":
            return 200, {}
        match = REPO_PATH.fullmatch(path)
        if not match:
            return 404, {"error": f"no route {method} {path}"}
        kind, repo, action = match[1].rstrip("s"), match[2], match[3]
        key = f"{kind}/{repo}"
        if key not in self.repos:
            return 404, {"error": "Repository not found"}
        files = self.repos[key]
        if action == "revision":
            siblings = [{"rfilename": p} for p in sorted(files)]
            return 200, {"id": repo, "sha": self.heads.get(key), "siblings": siblings}
        if action == "preupload":
            return 200, {
                "files": [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_hash(files[f["path"]]) if f["path"] in files else None,
                    }
                    for f in json.loads(body)["files"]
                ]
            }
        return self.commit(key, body)

    def commit(self, key: str, body: bytes) -> tuple[int, Any]:
        written = []
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                value = item["value"]
                self.repos[key][value["path"]] = base64.b64decode(value["content"])
                written.append(value["path"])
            elif item["key"] != "header":
                return 400, {"error": f"this test hub takes regular files only, not {item['key']}"}
        oid = hashlib.sha1(f"{key}{len(self.commits)}".encode()).hexdigest()
        self.heads[key] = oid
        self.commits.append((key, written))
        return 200, {"commitUrl": f"{self.page(key)}/commit/{oid}", "commitOid": oid}

    def page(self, key: str) -> str:
        """The repo's page, as the Hub names it: /ORG/NAME for a model, /datasets/ORG/NAME."""
        kind, repo = key.split("/", 1)
        return f"{self.url}/{repo}" if kind == "model" else f"{self.url}/{kind}s/{repo}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                hub.requests.append((self.command, path))
                if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    status, data = 401, {"error": "Invalid credentials in Authorization header"}
                else:
                    status, data = hub.answer(self.command, path, body)
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

        return Handler

"""A loopback server for the providers' batch APIs: OpenAI Files + Batches and Anthropic Message Batches.

    with BatchServer(reply=lambda body: "The answer is 5.") as server:
        teacher = ModelEndpoint(name="t", model="m", base_url=server.base_url, batch=True)
        server.outcomes.append("expire")          # the next batch expires with half its items done
        server.fail = lambda body, attempt: 500 if attempt == 1 else None
        ...
        assert len(server.batches) == 2

Real HTTP on 127.0.0.1 (aiohttp in a thread) with the documented routes: `POST /v1/files`
(multipart, purpose batch), `POST /v1/batches`, `GET /v1/batches` (list),
`GET /v1/batches/ID`, `POST /v1/batches/ID/cancel`, `GET /v1/files/ID/content`;
`POST /v1/messages/batches`, `GET /v1/messages/batches` (list, with `created_at` from the
machine's clock), `GET /v1/messages/batches/ID`, `POST .../cancel`, `GET .../results`; and
`GET /stats`.

Time is the server's own clock, which moves by `tick` seconds after every status request (set
`tick = 0` to hold every batch where it is, or call `advance`), so no test waits for real. A
batch validates for `validating` seconds, its items finish evenly over `running` seconds,
it finalizes for `finalizing` seconds. `outcomes` is a queue of plans for the next batches:
"expire" (ends half done, the rest expired) or "cancel" (cancelled half done, as from the
provider's console). `lost_replies = n`: the next n batch creates (either provider) succeed but the
connection drops before the reply; `download_seconds`: how long a results file takes to
arrive; `enqueued_tokens`: a batch that would take the unfinished ones past it fails with
`token_limit_exceeded` (with `refuse_when_full`, as Azure's "fail fast" regions do, its
create is refused with HTTP 400 instead). `fail(body, attempt)` returns an HTTP status for an item that fails
(attempt counts the submissions of its custom_id), or None. Batches over `max_requests` or
`max_bytes` are refused the way the provider refuses them. It also runs as a process:

    python -m mapd.testing.batch_server --tick 5    # prints the port, serves until killed
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from aiohttp import web

from mapd.testing.loopback import chat_body, echo_reply, serve_from_command_line, words

Reply = Callable[[dict[str, Any]], str]
Fail = Callable[[dict[str, Any], int], "int | None"]
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ANTHROPIC_ERRORS = {400: "invalid_request_error", 429: "rate_limit_error", 529: "overloaded_error"}


@dataclass
class ServerBatch:
    id: str
    kind: Literal["openai", "anthropic"]
    created: float
    items: list[tuple[str, dict[str, Any], int]]  # custom_id, body or params, attempt
    plan: str = "complete"
    input_file_id: str = ""
    stopped_at: float | None = None  # when a cancel was asked for
    outcome: dict[str, dict[str, Any] | int] = field(default_factory=dict)  # reply or status
    files: tuple[str | None, str | None] = (None, None)
    metadata: dict[str, str] = field(default_factory=dict)
    wall: float = field(default_factory=time.time)  # when made, on the machine's clock


class BatchServer:
    """Both providers' batch APIs on one port; `base_url` ends in /v1 for either."""

    def __init__(
        self,
        reply: Reply | None = None,
        *,
        tick: float = 1.0,
        validating: float = 1.0,
        running: float = 10.0,
        finalizing: float = 1.0,
        max_requests: int = 50_000,
        max_bytes: int = 200_000_000,
        port: int = 0,
    ) -> None:
        self.reply = reply or echo_reply
        self.fail: Fail = lambda body, attempt: None
        self.tick, self.clock = tick, 0.0
        self.validating, self.running, self.finalizing = validating, running, finalizing
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self.port = port
        self.outcomes: deque[str] = deque()
        self.batches: dict[str, ServerBatch] = {}
        self.files: dict[str, bytes] = {}
        self.submissions: dict[str, int] = {}  # custom_id -> times submitted
        self.polls = 0
        self.http_requests = 0
        self.lost_replies = 0  # the next N creates make the batch, then drop the reply
        self.download_seconds = 0.0  # how long a results file takes to arrive
        self.enqueued_tokens: int | None = None  # OpenAI's per-model limit of queued tokens
        self.refuse_when_full = False  # Azure's "fail fast": the create is refused (HTTP 400)
        self.creates = 0  # batch creates asked for, refused ones included
        self.serial = secrets.token_hex(4)  # ids of two servers never collide, as a provider's
        self.headers: list[dict[str, str]] = []
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def advance(self, seconds: float) -> None:
        self.clock += seconds

    def stats(self) -> dict[str, Any]:
        return {
            "batches": len(self.batches),
            "items": sum(len(b.items) for b in self.batches.values()),
            "polls": self.polls,
            "http_requests": self.http_requests,
        }

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> BatchServer:
        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.http_requests += request.path != "/stats"
            return await handler(request)

        app = web.Application(client_max_size=1 << 30, middlewares=[count])
        app.add_routes(
            [
                web.post("/v1/files", self.upload),
                web.get("/v1/files/{id}/content", self.file_content),
                web.post("/v1/batches", self.create_openai),
                web.get("/v1/batches", self.list_openai),
                web.get("/v1/batches/{id}", self.get_batch),
                web.post("/v1/batches/{id}/cancel", self.cancel),
                web.post("/v1/messages/batches", self.create_anthropic),
                web.get("/v1/messages/batches", self.list_anthropic),
                web.get("/v1/messages/batches/{id}", self.get_batch),
                web.post("/v1/messages/batches/{id}/cancel", self.cancel),
                web.get("/v1/messages/batches/{id}/results", self.anthropic_results),
                web.get("/stats", self.get_stats),
            ]
        )
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.runner = web.AppRunner(app, access_log=None)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", self.port)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="batch-server", daemon=True)
        self.thread.start()
        ready.wait()
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            await self.runner.cleanup()
            self.loop.stop()

        if self.thread is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
            self.thread.join(timeout=10)
            self.thread = None

    def __enter__(self) -> BatchServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- OpenAI -------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or not isinstance(upload, web.FileField):
            return error(400, "expected purpose=batch and a file")
        content = upload.file.read()
        if len(content) > self.max_bytes:
            return error(400, f"file is {len(content)} bytes; at most {self.max_bytes}")
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = content
        return web.json_response(
            {"id": file_id, "object": "file", "bytes": len(content), "purpose": "batch"}
        )

    async def create_openai(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        self.creates += 1
        args = await request.json()
        if args.get("completion_window") != "24h" or args.get("endpoint") != "/v1/chat/completions":
            return error(400, "completion_window must be 24h, endpoint /v1/chat/completions")
        content = self.files.get(args.get("input_file_id", ""))
        if content is None:
            return error(404, "no such file")
        batch = ServerBatch(f"batch_{self.serial}{len(self.batches) + 1}", "openai", self.clock, [])
        batch.input_file_id = args["input_file_id"]
        batch.metadata = args.get("metadata") or {}
        problem = self.read_lines(batch, content)
        if problem:
            batch.plan, batch.outcome["_error"] = "failed", {"message": problem}
        elif self.over_queue(batch) and self.refuse_when_full:
            body = {"error": {"code": QUEUE_FULL, "message": QUEUE_FULL_MESSAGE}}
            return web.json_response(body, status=400)
        elif self.over_queue(batch):
            batch.plan = "failed"
            batch.outcome["_error"] = {"code": QUEUE_FULL, "message": QUEUE_FULL_MESSAGE}
        self.add(batch)
        self.lose_reply(request)
        return web.json_response(self.openai_view(batch))

    def lose_reply(self, request: web.Request) -> None:
        """With `lost_replies` left: the batch is made, but the client never hears of it."""
        if self.lost_replies:
            self.lost_replies -= 1
            request.transport.abort()  # type: ignore[union-attr]

    def read_lines(self, batch: ServerBatch, content: bytes) -> str | None:
        lines = [line for line in content.splitlines() if line.strip()]
        if len(lines) > self.max_requests:
            return f"{len(lines)} requests; at most {self.max_requests} per batch"
        for n, raw in enumerate(lines, 1):
            line = json.loads(raw)
            body = line.get("body") or {}
            if line.get("method") != "POST" or line.get("url") != "/v1/chat/completions":
                return f"line {n}: method must be POST and url /v1/chat/completions"
            if not body.get("model") or not body.get("messages"):
                return f"line {n}: body needs model and messages"
            batch.items.append((line["custom_id"], body, 0))
        if len({cid for cid, _, _ in batch.items}) != len(batch.items):
            return "custom_id values must be unique within a batch"
        return None

    def over_queue(self, batch: ServerBatch) -> bool:
        """Whether `batch` and the unfinished ones would pass `enqueued_tokens` (counted as
        OpenAI does before running: the prompt, about 4 characters a token, plus max_tokens)."""
        if self.enqueued_tokens is None:
            return False

        def tokens(b: ServerBatch) -> int:
            return sum(
                sum(len(m["content"]) for m in body["messages"]) // 4 + body.get("max_tokens", 0)
                for _, body, _ in b.items
            )

        queued = [b for b in self.batches.values() if b.kind == "openai"]
        waiting = sum(tokens(b) for b in queued if self.status(b)[0] not in TERMINAL)
        return waiting + tokens(batch) > self.enqueued_tokens

    def openai_view(self, batch: ServerBatch) -> dict[str, Any]:
        status, done = self.status(batch)
        failed = sum(1 for cid in done if isinstance(batch.outcome.get(cid), int))
        view: dict[str, Any] = {
            "id": batch.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": batch.input_file_id,
            "completion_window": "24h",
            "status": status,
            "created_at": int(batch.created),
            "metadata": batch.metadata,
            "output_file_id": batch.files[0],
            "error_file_id": batch.files[1],
            "request_counts": {
                "total": len(batch.items),
                "completed": len(done) - failed,
                "failed": failed,
            },
        }
        if batch.plan == "failed":
            view["errors"] = {"object": "list", "data": [batch.outcome["_error"]]}
            view["request_counts"] = {"total": 0, "completed": 0, "failed": 0}
        return view

    async def list_openai(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        newest = [b for b in reversed(self.batches.values()) if b.kind == "openai"][:limit]
        data = [self.openai_view(b) for b in newest]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        content = self.files.get(request.match_info["id"])
        if content is None:
            return error(404, "no such file")
        return await self.send_file(request, content)

    # --- Anthropic ----------------------------------------------------------------------

    async def create_anthropic(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        if request.headers.get("anthropic-version") is None:
            return error(400, "anthropic-version header is required")
        raw = await request.read()
        body = json.loads(raw)
        requests = body.get("requests") or []
        if len(requests) > self.max_requests or len(raw) > self.max_bytes:
            return error(413, "request_too_large: too many requests or bytes in one batch")
        batch = ServerBatch(
            f"msgbatch_{self.serial}{len(self.batches) + 1}", "anthropic", self.clock, []
        )
        for entry in requests:
            params = entry.get("params") or {}
            if not CUSTOM_ID.match(entry.get("custom_id", "")):
                return error(400, "custom_id must match ^[a-zA-Z0-9_-]{1,64}$")
            if not isinstance(params.get("max_tokens"), int) or not params.get("messages"):
                return error(400, "params need max_tokens and messages")
            if any(m.get("role") not in ("user", "assistant") for m in params["messages"]):
                return error(400, "messages: roles must be user or assistant (system is top-level)")
            batch.items.append((entry["custom_id"], params, 0))
        self.add(batch)
        self.lose_reply(request)
        return web.json_response(self.anthropic_view(batch))

    async def list_anthropic(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        newest = [b for b in reversed(self.batches.values()) if b.kind == "anthropic"][:limit]
        data = [self.anthropic_view(b) for b in newest]
        ids = [b["id"] for b in data]
        first, last = (ids[0], ids[-1]) if ids else (None, None)
        return web.json_response(
            {"data": data, "has_more": False, "first_id": first, "last_id": last}
        )

    def anthropic_view(self, batch: ServerBatch) -> dict[str, Any]:
        status, done = self.status(batch)
        counts = {"processing": len(batch.items) - len(done)}
        for kind in ("succeeded", "errored", "canceled", "expired"):
            counts[kind] = 0
        for cid in done:
            counts["errored" if isinstance(batch.outcome.get(cid), int) else "succeeded"] += 1
        ended = status in ("completed", "expired", "cancelled")
        if ended:
            counts[{"expired": "expired"}.get(status, "canceled")] += counts["processing"]
            counts["processing"] = 0
        return {
            "id": batch.id,
            "type": "message_batch",
            "created_at": datetime.fromtimestamp(batch.wall, timezone.utc)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "cancel_initiated_at": None if batch.stopped_at is None else "yes",
            "processing_status": "ended"
            if ended
            else "canceling"
            if status == "cancelling"
            else "in_progress",
            "request_counts": counts,
            "results_url": f"{self.base_url}/messages/batches/{batch.id}/results"
            if ended
            else None,
        }

    async def anthropic_results(self, request: web.Request) -> web.StreamResponse:
        batch = self.batches.get(request.match_info["id"])
        if batch is None or batch.files[0] is None:
            return error(404, "no results yet")
        return await self.send_file(request, self.files[batch.files[0]])

    async def send_file(self, request: web.Request, content: bytes) -> web.StreamResponse:
        """A results file, in ten parts over `download_seconds`, as over a slow link."""
        reply = web.StreamResponse(headers={"Content-Type": "application/jsonl"})
        await reply.prepare(request)
        step = -(-len(content) // 10) or 1
        for start in range(0, len(content), step):
            await asyncio.sleep(self.download_seconds / 10)
            await reply.write(content[start : start + step])
        await reply.write_eof()
        return reply

    # --- both ---------------------------------------------------------------------------

    def add(self, batch: ServerBatch) -> None:
        batch.items = [(cid, body, self.count(cid)) for cid, body, _ in batch.items]
        if batch.plan != "failed" and self.outcomes:
            batch.plan = self.outcomes.popleft()
        self.batches[batch.id] = batch

    def count(self, custom_id: str) -> int:
        self.submissions[custom_id] = self.submissions.get(custom_id, 0) + 1
        return self.submissions[custom_id]

    async def get_batch(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return error(404, "no such batch")
        self.polls += 1
        view = self.openai_view if batch.kind == "openai" else self.anthropic_view
        reply = web.json_response(view(batch))
        self.clock += self.tick  # what the next look will see
        return reply

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return error(404, "no such batch")
        if batch.stopped_at is None and self.status(batch)[0] not in TERMINAL:
            batch.stopped_at = self.clock
        view = self.openai_view if batch.kind == "openai" else self.anthropic_view
        return web.json_response(view(batch))

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def status(self, batch: ServerBatch) -> tuple[str, list[str]]:
        """The batch's status at the server's clock and the custom_ids finished by then."""
        if batch.plan == "failed":
            return "failed", []
        t = self.clock - batch.created
        stop = batch.stopped_at - batch.created if batch.stopped_at is not None else None
        if batch.plan in ("expire", "cancel") and stop is None:
            stop = self.validating + self.running / 2
        if stop is not None and t >= stop:
            done = self.finished(batch, stop)
            if batch.plan == "expire" and batch.stopped_at is None:
                return self.end(batch, "expired", done), done
            if t < stop + self.finalizing:
                return "cancelling", done
            return self.end(batch, "cancelled", done), done
        done = self.finished(batch, t)
        if t < self.validating:
            return "validating", done
        if t < self.validating + self.running:
            return "in_progress", done
        if t < self.validating + self.running + self.finalizing:
            return "finalizing", done
        return self.end(batch, "completed", done), done

    def finished(self, batch: ServerBatch, t: float) -> list[str]:
        n = len(batch.items)
        done = []
        for i, (cid, body, attempt) in enumerate(batch.items):
            if t < self.validating + self.running * (i + 1) / n:
                break
            if cid not in batch.outcome:
                status = self.fail(body, attempt)
                batch.outcome[cid] = status if status else self.reply(body)  # type: ignore[assignment]
            done.append(cid)
        return done

    def end(self, batch: ServerBatch, status: str, done: list[str]) -> str:
        """Write the result files the first time the batch is seen ended."""
        if batch.files[0] is None:
            if batch.kind == "openai":
                self.write_openai_files(batch, status, done)
            else:
                file_id = f"results-{batch.id}"
                lines = (
                    anthropic_line(batch, cid, params, status) for cid, params, _ in batch.items
                )
                self.files[file_id] = jsonl(lines)
                batch.files = (file_id, None)
        return status

    def write_openai_files(self, batch: ServerBatch, status: str, done: list[str]) -> None:
        finished = set(done)
        output, errors = [], []
        for cid, body, _ in batch.items:
            outcome = batch.outcome.get(cid) if cid in finished else None
            line: dict[str, Any] = {"id": f"batch_req_{cid[:12]}", "custom_id": cid}
            if isinstance(outcome, str):
                text = outcome
                response = json.loads(chat_body(body, text))
                output.append(
                    {**line, "response": {"status_code": 200, "body": response}, "error": None}
                )
            elif isinstance(outcome, int):
                message = {
                    "error": {"message": f"injected error {outcome}", "type": "server_error"}
                }
                errors.append(
                    {**line, "response": {"status_code": outcome, "body": message}, "error": None}
                )
            else:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                message = {"code": code, "message": f"the batch {status} before this request ran"}
                errors.append({**line, "response": None, "error": message})
        ids = []
        for name, lines in (("output", output), ("errors", errors)):
            if lines:
                self.files[f"file-{name}-{batch.id}"] = jsonl(lines)
            ids.append(f"file-{name}-{batch.id}" if lines else None)
        batch.files = (ids[0], ids[1])


TERMINAL = {"completed", "failed", "expired", "cancelled"}


def anthropic_line(
    batch: ServerBatch, cid: str, params: dict[str, Any], status: str
) -> dict[str, Any]:
    outcome = batch.outcome.get(cid)
    if isinstance(outcome, str):
        prompt = words(params.get("system", "")) + sum(
            words(m["content"]) for m in params["messages"]
        )
        message = {
            "id": f"msg_{cid[:12]}",
            "type": "message",
            "role": "assistant",
            "model": params["model"],
            "content": [{"type": "text", "text": outcome}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": words(outcome)},
        }
        return {"custom_id": cid, "result": {"type": "succeeded", "message": message}}
    if isinstance(outcome, int):
        kind = ANTHROPIC_ERRORS.get(outcome, "api_error")
        error = {"type": "error", "error": {"type": kind, "message": f"injected error {outcome}"}}
        return {"custom_id": cid, "result": {"type": "errored", "error": error}}
    return {"custom_id": cid, "result": {"type": "expired" if status == "expired" else "canceled"}}


def jsonl(lines: Any) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


QUEUE_FULL = "token_limit_exceeded"
QUEUE_FULL_MESSAGE = (
    "Enqueued token limit reached. Please try again once some in_progress batches have completed."
)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "loopback"}}, status=status)


def main() -> None:
    description = "Loopback OpenAI + Anthropic batch server."
    serve_from_command_line(BatchServer, description, "tick", 1.0, "clock seconds per status poll")


if __name__ == "__main__":
    main()

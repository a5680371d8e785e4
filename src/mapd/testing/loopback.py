"""A loopback OpenAI-compatible server with scripted replies, latency and injected faults.

    with LoopbackServer(reply=lambda req: "The answer is 5.", latency=0.01) as server:
        teacher = ModelEndpoint(name="t", model="fake", base_url=server.base_url)
        server.faults.extend([Fault.error(429, retry_after="2"), Fault("reset")])
        ...
        assert server.max_in_flight <= 4

`latency` is seconds per reply, or a function of the request. `reply(request_json)`
returns the reply text (or a ScriptedReply, or a Fault) for each chat request, so tests can
script a teacher or a student per prompt; `mapd.testing.providers` refuses bodies the way
hosted providers do. `serial=True` answers one request at a time, as `transformers serve`
and llama.cpp's server do: the others wait, and one abandoned by a client that timed out
is still worked on. `faults` is a queue consumed by the next requests, in arrival
order, before `reply` is asked. The server runs its own event loop in a thread and speaks
plain HTTP/1.1 on raw sockets, so it can reset connections and cut bodies short. It also
runs as a process for benchmarks:

    python -m mapd.testing.loopback --latency 0.1      # prints the port, serves until killed

and answers `GET /stats` with its counters as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

FaultKind = Literal["error", "reset", "cut", "hang", "malformed", "empty"]


@dataclass(frozen=True)
class Fault:
    """One injected failure.

    error: an HTTP error status with optional headers (e.g. Retry-After); `echo_auth` puts
    the request's Authorization header in the error body, as some providers do.
    reset: the connection is reset (RST) without a reply. cut: the headers and half the
    body are sent, then the connection is dropped. hang: no reply for `seconds`.
    malformed: a 200 whose body is not JSON. empty: a 200 with empty content.
    """

    kind: FaultKind
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    echo_auth: bool = False
    seconds: float = 3600.0
    body: Any = None  # error: the JSON body to send (a provider's own), else a generic one

    @classmethod
    def error(cls, status: int, retry_after: str | None = None, **headers: str) -> Fault:
        extra = dict(headers)
        if retry_after is not None:
            extra["Retry-After"] = retry_after
        return cls("error", status=status, headers=extra)

    @classmethod
    def refusal(cls, status: int, body: Any) -> Fault:
        """An error reply with the provider's own JSON body."""
        return cls("error", status=status, body=body)


@dataclass(frozen=True)
class ScriptedReply:
    """A reply with more than text. `content` None is what a reasoning model sends when it
    spent its whole budget thinking; `reasoning` goes in the message field named
    `reasoning_field` (vLLM's `reasoning_content` or `reasoning`); `usage=False` leaves
    `usage` out, as some servers do; `reasoning_tokens` is reported in
    `usage.completion_tokens_details` as OpenAI does."""

    content: str | None
    finish_reason: str = "stop"
    reasoning: str | None = None
    reasoning_field: str = "reasoning_content"
    usage: bool = True
    reasoning_tokens: int = 0


Reply = Callable[[dict[str, Any]], "str | ScriptedReply | Fault"]


def echo_reply(request: dict[str, Any]) -> str:
    """The default reply: names the model and repeats the start of the last message."""
    last = request["messages"][-1]["content"]
    return f"[{request.get('model')}] reply to: {last[:60]}"


def words(text: str) -> int:
    return max(1, len(text.split()))


def http_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"HTTP/1.1 {status} X",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chat_body(request: dict[str, Any], reply: str | ScriptedReply) -> bytes:
    if isinstance(reply, str):
        reply = ScriptedReply(reply)
    prompt = sum(words(m.get("content", "")) for m in request.get("messages", []))
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.reasoning is not None:
        message[reply.reasoning_field] = reply.reasoning
    completion = words(reply.content) if reply.content else 0
    completion += words(reply.reasoning) if reply.reasoning else 0
    body: dict[str, Any] = {
        "id": "chatcmpl-loopback",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "loopback"),
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
    }
    if reply.usage:
        body["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if reply.reasoning_tokens:
            details = {"reasoning_tokens": reply.reasoning_tokens}
            body["usage"]["completion_tokens_details"] = details
    return json.dumps(body).encode()


class LoopbackServer:
    """Serves `/v1/chat/completions` on 127.0.0.1 from a background thread."""

    def __init__(
        self,
        reply: Reply | None = None,
        latency: float | Callable[[dict[str, Any]], float] = 0.0,
        port: int = 0,
        models: tuple[str, ...] = (),
        serial: bool = False,
    ) -> None:
        self.reply = reply or echo_reply
        self.models = models  # what GET /models lists; empty: the server names none
        self.models_asked: list[dict[str, str]] = []  # the headers of each GET /models
        self.latency = latency
        self.port = port
        self.serial: asyncio.Lock | None = asyncio.Lock() if serial else None
        self.faults: deque[Fault] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each chat request
        self.in_flight = 0
        self.max_in_flight = 0
        self.loop = asyncio.new_event_loop()
        self.thread: threading.Thread | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        return {
            "requests": len(self.requests),
            "max_in_flight": self.max_in_flight,
            "arrivals": list(self.arrivals),
        }

    def start(self) -> LoopbackServer:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            server = self.loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", self.port, backlog=1024)
            )
            self.port = server.sockets[0].getsockname()[1]
            self.server = server
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="loopback-server", daemon=True)
        self.thread.start()
        ready.wait()
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.loop.stop()

        if self.thread is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
            self.thread.join(timeout=10)
            self.thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if method == "GET" and path.endswith("/stats"):
            writer.write(http_response(200, json.dumps(self.stats()).encode()))
            await writer.drain()
            return True
        if method == "GET" and path.endswith("/models"):
            self.models_asked.append(headers)
            listed = [{"id": m, "object": "model"} for m in self.models]
            writer.write(
                http_response(200, json.dumps({"object": "list", "data": listed}).encode())
            )
            await writer.drain()
            return True
        if not path.endswith("/chat/completions"):
            writer.write(http_response(404, b'{"error": {"message": "not found"}}'))
            await writer.drain()
            return True
        request = json.loads(body)
        self.requests.append(request)
        self.headers.append(headers)
        self.arrivals.append(time.monotonic())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.serial is None:
                outcome = await self._work(request)
            else:
                async with self.serial:
                    outcome = await self._work(request)
            return await self._answer(writer, request, headers, outcome)
        finally:
            self.in_flight -= 1

    async def _work(self, request: dict[str, Any]) -> str | ScriptedReply | Fault:
        delay = self.latency(request) if callable(self.latency) else self.latency
        if delay:
            await asyncio.sleep(delay)
        return self.faults.popleft() if self.faults else self.reply(request)

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        request: dict[str, Any],
        headers: dict[str, str],
        outcome: str | ScriptedReply | Fault,
    ) -> bool:
        if not isinstance(outcome, Fault):
            writer.write(http_response(200, chat_body(request, outcome)))
            await writer.drain()
            return True
        fault = outcome
        if fault.kind == "error":
            message = f"injected error {fault.status}"
            if fault.echo_auth:
                message += f"; incorrect API key provided: {headers.get('authorization', '')}"
            error = {"error": {"message": message, "type": "loopback"}}
            body = json.dumps(error if fault.body is None else fault.body).encode()
            writer.write(http_response(fault.status, body, fault.headers))
        elif fault.kind == "malformed":
            writer.write(http_response(200, b'{"id": "chatcmpl-x", "choices": [{"ind'))
        elif fault.kind == "empty":
            writer.write(http_response(200, chat_body(request, "")))
        elif fault.kind == "hang":
            await asyncio.sleep(fault.seconds)
            return False
        elif fault.kind == "cut":
            whole = http_response(200, chat_body(request, "this reply is cut off midway"))
            writer.write(whole[: len(whole) - 40])
            await writer.drain()
            writer.transport.abort()
            return False
        elif fault.kind == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        await writer.drain()
        return True


def serve_from_command_line(
    server: Callable[..., Any], description: str, option: str, default: float, help: str
) -> None:
    """A loopback server as a process: `--port` and the float `--{option}` are passed to
    `server(...)`, which is started; prints the port and serves until killed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(f"--{option}", type=float, default=default, help=help)
    args = parser.parse_args()
    running = server(port=args.port, **{option: getattr(args, option)}).start()
    print(running.port, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        running.stop()


def main() -> None:
    description = "Loopback OpenAI-compatible server."
    serve_from_command_line(LoopbackServer, description, "latency", 0.0, "seconds per reply")


if __name__ == "__main__":
    main()

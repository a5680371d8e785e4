"""An overloaded OpenAI-compatible server: the standard library's threaded HTTP server, backlog 5.

    python -m mapd.testing.overloaded --latency 0.1     # prints the port, serves until killed

`http.server.ThreadingHTTPServer` as it comes: a listen backlog of 5, HTTP/1.0 (one
connection per request), a thread per connection. With 64 clients connecting at once the
kernel's accept queue overflows and handshakes are dropped, as with a busy local server
(Ollama, llama.cpp) or one behind a saturated load balancer. Each chat request is answered
after `latency` seconds with `chat_body`'s reply. A client that waits for the kernel's
SYN retransmits (1, 3, 7, 15 s ...) instead of trying again stalls here; `mapd.testing`
tests and `bench/llm_throughput.py` use it to show that the client does not. It runs in a
process of its own, so that its threads do not compete with the client's event loop for
the interpreter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mapd.testing.loopback import chat_body


def handler(latency: float) -> type[BaseHTTPRequestHandler]:
    class ChatHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 -- the name http.server looks up
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(latency)
            body = chat_body(request, "The answer is 5.")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # one line per request would flood the terminal

    return ChatHandler


class OverloadedServer:
    """Runs the server in a child process on 127.0.0.1; `base_url` once started."""

    def __init__(self, latency: float = 0.1) -> None:
        self.latency = latency
        self.process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> OverloadedServer:
        command = [sys.executable, "-m", "mapd.testing.overloaded", "--latency", str(self.latency)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per reply")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(args.latency))
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


if __name__ == "__main__":
    main()

"""A reply function for the loopback server that fails a share of requests with mixed faults.

    replies = FaultyReplies(scripted_reply, rate=0.3, models={"alice-model"}, seed=1)
    with LoopbackServer(reply=replies) as server:
        ...run a stage against server.base_url...
    assert replies.duplicates() == {}      # no request was answered twice

The server cannot see the client's cache key, so it counts successful answers per hash of
the request body (model, messages, sampling: nothing in it varies between attempts). A
request answered successfully twice is work paid twice. Setting `down = True` makes every
request to the faulty models fail with 503, as an endpoint in an outage does.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Collection
from typing import Any

from mapd.testing.loopback import Fault

Reply = Callable[[dict[str, Any]], "str | Fault"]


def fault_mix(retry_after: str = "0.01", hang: float = 30.0) -> list[Fault]:
    """One of each fault a provider shows: throttling, server errors, a reset connection,
    no reply until the client times out, a body that is not JSON, empty content, a cut body."""
    return [
        Fault.error(429, retry_after=retry_after),
        Fault.error(500),
        Fault.error(503),
        Fault("reset"),
        Fault("hang", seconds=hang),
        Fault("malformed"),
        Fault("empty"),
        Fault("cut"),
    ]


def request_hash(request: dict[str, Any]) -> str:
    blob = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class FaultyReplies:
    """Wraps a reply function: `rate` of the requests to `models` (all when None) get a fault."""

    def __init__(
        self,
        reply: Reply,
        rate: float = 0.3,
        models: Collection[str] | None = None,
        seed: int = 0,
        faults: list[Fault] | None = None,
    ) -> None:
        self.reply = reply
        self.rate = rate
        self.models = set(models) if models is not None else None
        self.rng = random.Random(seed)
        self.faults = faults or fault_mix()
        self.down = False
        self.answered: Counter[str] = Counter()  # successful answers per request hash
        self.injected: Counter[str] = Counter()  # faults sent, by kind (errors by status)
        self.lock = threading.Lock()

    def __call__(self, request: dict[str, Any]) -> str | Fault:
        with self.lock:
            if self.models is None or request.get("model") in self.models:
                if self.down:
                    self.injected["down-503"] += 1
                    return Fault.error(503)
                if self.rng.random() < self.rate:
                    fault = self.rng.choice(self.faults)
                    label = str(fault.status) if fault.kind == "error" else fault.kind
                    self.injected[label] += 1
                    return fault
            outcome = self.reply(request)
            if isinstance(outcome, str):
                self.answered[request_hash(request)] += 1
            return outcome

    def duplicates(self) -> dict[str, int]:
        """Request hashes answered successfully more than once, with their counts."""
        return {h: n for h, n in self.answered.items() if n > 1}

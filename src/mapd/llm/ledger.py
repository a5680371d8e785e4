"""The call ledger and the budget: every call, cached or not, with its tokens, latency and cost.

A run is identified by a random id kept in its run folder (`run_id(run_dir)`, the file
`.mapd-run-id`), so `mapd ledger runs/demo` finds the calls of every invocation of that
run, a moved folder keeps its calls and its budget, and a new run in a folder that once
held another starts with nothing spent.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from mapd.config import BudgetConfig, Price
from mapd.errors import MapdError
from mapd.llm.store import CallStore, Row
from mapd.llm.types import Completion

RUN_ID_FILE = ".mapd-run-id"


def run_id(run_dir: str | Path, create: bool = True) -> str:
    """The run folder's id, made on first use (or, with create=False, "" when it has none)."""
    path = Path(run_dir).expanduser() / RUN_ID_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if not create:
            return ""
    made = f"run-{uuid.uuid4().hex}"
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{RUN_ID_FILE}.{made}.tmp")
    temp.write_text(made + "\n", encoding="utf-8")
    temp.replace(path)
    return made


def call_cost(
    price: Price, prompt_tokens: int, completion_tokens: int, batch: bool = False
) -> float:
    """USD for one call; a call sent in a provider's batch costs `price.batch_discount` of it."""
    usd = (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1e6
    return usd * price.batch_discount if batch else usd


@dataclass(frozen=True)
class CallRecord:
    run: str
    stage: str
    endpoint: str
    backend: str
    model: str
    key: str
    completion: Completion | None
    cost: float
    error: str | None
    attempts: int
    batch: str | None = None  # the provider's batch id, for a call sent in a batch
    timeouts: int = 0
    stalls: int = 0


def call_row(rec: CallRecord) -> Row:
    """The write that records one call in the ledger."""
    c = rec.completion
    return (
        "INSERT INTO calls (run, stage, endpoint, backend, model, key, prompt_tokens,"
        " completion_tokens, latency, cost, cached, ok, error, attempts, created, batch,"
        " finish_reason, reasoning_tokens, estimated, timeouts, stalls)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            rec.run,
            rec.stage,
            rec.endpoint,
            rec.backend,
            rec.model,
            rec.key,
            c.prompt_tokens if c else 0,
            c.completion_tokens if c else 0,
            c.latency if c else 0.0,
            rec.cost,
            int(bool(c and c.cached)),
            int(rec.error is None),
            rec.error,
            rec.attempts,
            time.time(),
            rec.batch,
            c.finish_reason if c else None,
            c.reasoning_tokens if c else 0,
            int(bool(c and c.estimated)),
            rec.timeouts,
            rec.stalls,
        ),
    )


@dataclass(frozen=True)
class LedgerRow:
    stage: str
    endpoint: str
    model: str
    calls: int
    cached: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    latency: float
    reasoning_tokens: int = 0
    cut_off: int = 0  # replies stopped at the token limit
    timeouts: int = 0  # attempts that timed out
    estimated: int = 0  # calls whose tokens are estimated (the endpoint sent no usage)
    batched: int = 0  # calls answered through a provider's batch API
    stalls: int = 0  # attempts whose connection was given up as stalled (an overloaded server)


def ledger_totals(store: CallStore, run_dir: str | Path) -> list[LedgerRow]:
    """Totals per stage and endpoint for one run, in the order the stages first called."""
    rows = store.db.execute(
        "SELECT stage, endpoint, model, COUNT(*), SUM(cached), SUM(1 - ok), SUM(prompt_tokens),"
        " SUM(completion_tokens), SUM(cost), SUM(latency), SUM(reasoning_tokens),"
        " COALESCE(SUM(finish_reason = 'length'), 0), SUM(timeouts), SUM(estimated),"
        " SUM(batch IS NOT NULL), SUM(stalls) FROM calls WHERE run = ?"
        " GROUP BY stage, endpoint, model ORDER BY MIN(id)",
        (run_id(run_dir, create=False),),
    ).fetchall()
    if not rows:
        raise MapdError(
            f"no calls recorded for run folder {run_dir} in {store.path}",
            "give the run folder of a run that made LLM calls, e.g. runs/demo, with the "
            "MAPD_HOME it ran with (calls are recorded in MAPD_HOME's calls.sqlite)",
        )
    return [LedgerRow(*row) for row in rows]


def spent(store: CallStore, run: str) -> tuple[float, int]:
    """USD and tokens already paid in this run (calls to the in-process backend are free)."""
    usd, tokens = store.db.execute(
        "SELECT SUM(cost), SUM(prompt_tokens + completion_tokens) FROM calls"
        " WHERE run = ? AND cached = 0 AND backend != 'transformers'",
        (run,),
    ).fetchone()
    return usd or 0.0, tokens or 0


class Budget:
    """A spending cap shared by every client of a run; once reached, no new request starts."""

    def __init__(
        self,
        usd: float | None = None,
        tokens: int | None = None,
        spent_usd: float = 0.0,
        spent_tokens: int = 0,
    ) -> None:
        self.usd, self.tokens = usd, tokens
        self.spent_usd, self.spent_tokens = spent_usd, spent_tokens
        # of the spent: held for submitted batches at their worst case, until collected
        self.held_usd, self.held_tokens = 0.0, 0

    @classmethod
    def for_run(cls, config: BudgetConfig, store: CallStore, run: str) -> Budget:
        """The configured cap, counting what earlier invocations of this run already spent."""
        usd, tokens = spent(store, run)
        return cls(config.usd, config.tokens, usd, tokens)

    def exhausted(self) -> bool:
        return (self.usd is not None and self.spent_usd >= self.usd) or (
            self.tokens is not None and self.spent_tokens >= self.tokens
        )

    def would_exceed(self, usd: float, tokens: int) -> bool:
        """Whether spending this much more would pass the cap."""
        return (self.usd is not None and self.spent_usd + usd > self.usd) or (
            self.tokens is not None and self.spent_tokens + tokens > self.tokens
        )

    def charge(self, usd: float, tokens: int) -> None:
        self.spent_usd += usd
        self.spent_tokens += tokens

    def hold(self, usd: float, tokens: int) -> None:
        """Count a submitted batch item's worst case as spent until its cost is known."""
        self.charge(usd, tokens)
        self.held_usd += usd
        self.held_tokens += tokens

    def settle(self, held: tuple[float, int], usd: float, tokens: int) -> None:
        """Replace what an item held by what it cost."""
        self.hold(-held[0], -held[1])
        self.charge(usd, tokens)

    def describe(self) -> str:
        parts = []
        if self.usd is not None:
            held = f", ${self.held_usd:.4f} of it held" if self.held_usd > 1e-12 else ""
            parts.append(f"${self.spent_usd:.4f} of budget.usd {self.usd}{held}")
        if self.tokens is not None:
            held = f", {self.held_tokens} of them held" if self.held_tokens > 0 else ""
            parts.append(f"{self.spent_tokens} of budget.tokens {self.tokens}{held}")
        if self.held_usd > 1e-12 or self.held_tokens > 0:
            parts.append("held: the worst case of submitted batches, until they are collected")
        return "; ".join(parts)

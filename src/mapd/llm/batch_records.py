"""A run's provider batches: their status, counts and cost, and cancelling them (`mapd batches`).

    rows, notes = asyncio.run(refresh_batches(store, "runs/demo"))
    rows = asyncio.run(cancel_batches(store, "runs/demo"))

The batches are the ones recorded in RUN_DIR/batches/<id>.json; status and counts of a batch
not ended are asked of the provider (through the endpoint of the run's own config.yaml),
else the last ones the run saw; cost is the ledger's: of collected replies only. The items a
cancelled batch finished are kept, and the next run resubmits only the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mapd.errors import MapdError
from mapd.llm.store import CallStore
from mapd.llm.types import BackendError
from mapd.rundir import read_json

ENDED = {"completed", "failed", "expired", "cancelled", "ended"}


@dataclass(frozen=True)
class BatchRow:
    id: str
    endpoint: str
    kind: str
    stage: str
    status: str
    requests: int
    done: int
    failed: int
    submitted: float
    collected: bool
    cost: float

    @property
    def ended(self) -> bool:
        return self.collected or self.status in ENDED


RECORD_KEYS = {"id", "endpoint", "kind", "stage", "requests", "submitted"}
DAMAGED = (
    "mapd writes these records itself and a damaged one cannot be read: the batch {id} is at "
    "the provider (look it up there); move the file out of batches/ to list the others"
)


def list_batches(store: CallStore, run_dir: str | Path) -> list[BatchRow]:
    """Every batch the run submitted, oldest first."""
    folder = Path(run_dir) / "batches"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise MapdError(
            f"no batches recorded in {run_dir}",
            "a run whose teachers have `batch: true` (or anthropic) records them in RUN_DIR/batches/",
        )
    rows = []
    for path in files:
        saved = read_json(path, fix=DAMAGED.format(id=path.stem))
        if not isinstance(saved, dict) or not saved.keys() >= RECORD_KEYS:
            raise MapdError(f"{path} is not a batch record", DAMAGED.format(id=path.stem))
        found = store.db.execute(
            "SELECT status, done, failed, collected FROM batches WHERE id = ?", (saved["id"],)
        ).fetchone()
        status, done, failed, collected = found or ("unknown", 0, 0, 0)
        (cost,) = store.db.execute(
            "SELECT COALESCE(SUM(cost), 0) FROM calls WHERE batch = ?", (saved["id"],)
        ).fetchone()
        rows.append(
            BatchRow(
                saved["id"],
                saved["endpoint"],
                saved["kind"],
                saved["stage"],
                status,
                saved["requests"],
                done,
                failed,
                saved["submitted"],
                bool(collected),
                cost,
            )
        )
    return sorted(rows, key=lambda r: r.submitted)


async def cancel_batches(store: CallStore, run_dir: str | Path) -> list[BatchRow]:
    """Cancel every batch of the run that has not ended; return the list after."""
    await ask_provider(store, run_dir, cancel=True)
    return list_batches(store, run_dir)


async def refresh_batches(
    store: CallStore, run_dir: str | Path
) -> tuple[list[BatchRow], list[str]]:
    """Every batch of the run, those not ended as the provider sees them now (a batch goes on
    at the provider while no run polls it); and a note for each the provider could not be
    asked about, listed as the run's last poll saw it."""
    notes = await ask_provider(store, run_dir, cancel=False)
    return list_batches(store, run_dir), notes


async def ask_provider(store: CallStore, run_dir: str | Path, cancel: bool) -> list[str]:
    """Ask the provider of each batch not ended for its status (or to cancel it), through the
    endpoint of the run's own config.yaml, and record the answer. A cancel that cannot be
    asked is an error; a status that cannot is a note."""
    from mapd.config import load_config
    from mapd.llm.batch_api import batch_api

    run_dir = Path(run_dir)
    pending = [r for r in list_batches(store, run_dir) if not r.ended]
    if not pending:
        return []
    if not (run_dir / "config.yaml").exists():
        if not cancel:
            return [f"{run_dir / 'config.yaml'} not found: status as of the run's last poll"]
        raise MapdError(
            f"{run_dir / 'config.yaml'} not found",
            "give the run folder itself (it keeps the config the run was made with)",
        )
    try:
        endpoints = {t.name: t for t in load_config(run_dir / "config.yaml").teachers}
    except MapdError as exc:
        if cancel:
            raise
        return [
            f"{run_dir / 'config.yaml'} cannot be read ({exc.message.splitlines()[0]}): "
            "status as of the run's last poll"
        ]
    notes = []
    for row in pending:
        endpoint = endpoints.get(row.endpoint)
        if endpoint is None or not endpoint.batch_kind:
            problem = f"batch {row.id}: the run's config has no batch teacher {row.endpoint!r}"
            if cancel:
                raise MapdError(problem, "cancel it in the provider's console")
            notes.append(f"{problem}: status as of the run's last poll")
            continue
        try:
            api = batch_api(endpoint)
            try:
                state = await (api.cancel(row.id) if cancel else api.status(row.id))
            finally:
                await api.aclose()
        except (BackendError, MapdError) as exc:
            if cancel:
                raise MapdError(
                    f"cancelling batch {row.id} failed: {exc.message}",
                    "check the endpoint's key and base_url, or cancel it in the provider's console",
                ) from None
            notes.append(
                f"batch {row.id}: the provider could not be asked ({exc.message}): "
                "status as of the run's last poll"
            )
            continue
        now = time.time()
        store.db.execute(
            "UPDATE batches SET status = ?, done = ?, failed = ?, updated = ?"
            f"{', cancel_asked = ?' if cancel else ''} WHERE id = ? AND collected = 0",
            (state.status, state.done, state.failed, now, *([now] if cancel else []), row.id),
        )
    return notes

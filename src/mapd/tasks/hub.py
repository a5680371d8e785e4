"""Rows of a Hugging Face hub dataset split, with a clear error when the hub cannot be reached."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mapd.errors import MapdError
from mapd.llm.hub_offline import offline_unless_resolvable


def read_hub_rows(
    hub_id: str, config: str | None, split: str, offline_hint: str
) -> Iterator[tuple[str, Any]]:
    """(location, row) per row of `hub_id` (config) split `split`, loaded with `datasets`."""
    import datasets

    with offline_unless_resolvable(hub_id) as unresolvable:
        try:
            dataset = datasets.load_dataset(hub_id, config, split=split)
        except Exception as exc:  # datasets raises many types offline: ConnectionError, OSError
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            if unresolvable:
                why = f"not in the local cache, and {unresolvable} cannot be resolved (offline?)"
            raise MapdError(
                f"could not load {hub_id} [{split}] from the Hugging Face hub: {why}",
                offline_hint,
            ) from None
    for index, row in enumerate(dataset):
        yield f"{hub_id} [{split}] row {index}", row

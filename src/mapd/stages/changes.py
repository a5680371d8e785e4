"""What changed since a stage ran: the settings that differ from those in its manifest.

    changes = changed_settings(cfg, manifest, train.settings)
    # [Change("train.lr", 1e-05, 2e-05)]: then (as the manifest records it), now (this config)

Every manifest records the resolved config the stage ran with, so a command whose settings
differ can name them, and `mapd eval` can stop before touching a student that its config no
longer describes. A setting counts only when it enters the stage's own settings (a changed
`eval.limit` is no change to the train stage).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from mapd.config import RunConfig, validate_config
from mapd.errors import MapdError

MISSING = object()


@dataclass(frozen=True)
class Change:
    key: str  # dotted, as on the command line
    then: Any  # as the stage ran with it
    now: Any  # as the config says

    def line(self, then_label: str = "then") -> str:
        return f"{self.key}: {cli_value(self.then)} {then_label}, {cli_value(self.now)} now"

    def override(self) -> str:
        """The KEY=VALUE that gives this setting back its earlier value."""
        return f"{self.key}={cli_value(self.then)}"


def cli_value(value: Any) -> str:
    """A value as it is written on the command line (null, true, 200, [a, b])."""
    if value is MISSING:
        return "(unset)"
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def recorded_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as a manifest records it (as config.yaml keeps it: the folder may move)."""
    data = cfg.model_dump(mode="json")
    data["output_dir"] = "."
    return data


def flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1}}` -> `{"train.lr": 1}`; list items are numbered (teachers.0.model)."""
    items: dict[str, Any] = {}
    if isinstance(data, dict):
        pairs = data.items()
    elif isinstance(data, list) and data and isinstance(data[0], dict):
        pairs = ((str(i), v) for i, v in enumerate(data))
    else:
        return {prefix: data}
    for key, value in pairs:
        items.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return items


def _with_value(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node: Any = out
    *parents, last = key.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    elif value is MISSING:
        node.pop(last, None)
    else:
        node[last] = value
    return out


def changed_settings(
    cfg: RunConfig,
    manifest: dict[str, Any] | None,
    settings: Callable[[RunConfig], dict[str, Any]],
) -> list[Change] | None:
    """The settings of `cfg` that differ from those the manifest's stage ran with and that the
    stage depends on (`settings` is the stage's own); None when the manifest records no config
    (a folder of an older mapd)."""
    recorded = (manifest or {}).get("config")
    if not isinstance(recorded, dict):
        return None
    now_data = recorded_config(cfg)
    then, now = flat(recorded), flat(now_data)
    ours = settings(cfg)
    changes = []
    for key in sorted(then.keys() | now.keys()):
        old, new = then.get(key, MISSING), now.get(key, MISSING)
        if old == new:
            continue
        try:  # does giving this one key its old value change what the stage depends on?
            reverted = validate_config(_with_value(now_data, key, old))
            matters = settings(reverted) != ours
        except (MapdError, KeyError, IndexError, ValueError, TypeError):
            matters = True  # cannot tell alone (e.g. a teacher added): name it
        if matters:
            changes.append(Change(key, old, new))
    return changes

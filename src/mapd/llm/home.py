"""The mapd home folder ($MAPD_HOME, default ~/.cache/mapd): call database, converted models."""

from __future__ import annotations

import os
from pathlib import Path

from mapd.errors import MapdError


def mapd_home() -> Path:
    """The home folder, created on first use."""
    home = Path(os.environ.get("MAPD_HOME") or Path.home() / ".cache" / "mapd").expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MapdError(
            f"cannot use {home} as mapd's home folder: {exc.strerror}",
            "set MAPD_HOME to a writable folder (the default is ~/.cache/mapd)",
        ) from None
    return home

"""The mapd home folder ($MAPD_HOME, default ~/.cache/mapd): call database, converted models."""

from __future__ import annotations

import os
from pathlib import Path


def mapd_home() -> Path:
    """The home folder, created on first use."""
    home = Path(os.environ.get("MAPD_HOME") or Path.home() / ".cache" / "mapd").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home

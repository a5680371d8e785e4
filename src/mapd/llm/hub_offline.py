"""Hugging Face hub loads without a minute of retries when there is no network: when the hub's
host name cannot be resolved, they run in offline mode (the local cache only), so a cached model
or dataset loads at once and a missing one fails at once, as with HF_HUB_OFFLINE=1.

    with offline_unless_resolvable(spec):
        AutoTokenizer.from_pretrained(spec)  # spec: a hub id or a local folder
"""

from __future__ import annotations

import functools
import socket
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse


@functools.cache
def unresolvable_hub_host() -> str | None:
    """The hub's host name (HF_ENDPOINT's) when it cannot be resolved and no proxy is set for
    it, else None."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    scheme = urlparse(constants.ENDPOINT).scheme
    if urllib.request.getproxies().get(scheme) and not urllib.request.proxy_bypass(host):
        return None  # the proxy resolves the name: a local resolver may well not know it
    try:
        socket.getaddrinfo(host, 443)
    except socket.gaierror:
        return host
    return None


@contextmanager
def offline_unless_resolvable(repo: str) -> Iterator[str | None]:
    """Yields the unresolvable hub host when offline mode was switched on for the block; `repo`
    a local folder asks no name server (a hung one could take seconds)."""
    from huggingface_hub import constants

    if Path(repo).exists() or constants.HF_HUB_OFFLINE or not (host := unresolvable_hub_host()):
        yield None
        return
    # Both libraries read offline mode from these constants at call time (set from
    # HF_HUB_OFFLINE at import, which is too late to set here).
    holders = [constants]
    if (datasets_config := sys.modules.get("datasets.config")) is not None:
        holders.append(datasets_config)
    before = [holder.HF_HUB_OFFLINE for holder in holders]
    for holder in holders:
        holder.HF_HUB_OFFLINE = True
    try:
        yield host
    finally:
        for holder, value in zip(holders, before, strict=True):
            holder.HF_HUB_OFFLINE = value

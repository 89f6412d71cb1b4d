"""Which backend serves each store, by the scheme of its `[state]` URL: one table per store kind.

Each row names a factory by import path (as uvicorn's loop and protocol tables do), so the config
schema checks a URL against this table without importing a backend, and a backend (`postgresql`,
`redis+cluster`) is one row here plus its module. A factory takes the whole URL and the store's
`Options`; what the URL's query means is the backend's own business (`?prefix=` for every Redis
store, `?max_entries=` for the memory cache).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BACKENDS: dict[str, dict[str, str]] = {
    "cache": {
        "memory": "gateway.cache.store:open_memory",
        "off": "gateway.cache.store:open_disabled",
        "redis": "gateway.cache.store:open_redis",
        "rediss": "gateway.cache.store:open_redis",
    },
    "limits": {
        "memory": "gateway.limits.store:open_memory",
        "redis": "gateway.limits.store:open_redis",
        "rediss": "gateway.limits.store:open_redis",
    },
    "prompts": {
        "sqlite": "gateway.prompts.store:open_sqlite",
        "redis": "gateway.prompts.store:open_redis",
        "rediss": "gateway.prompts.store:open_redis",
    },
    "traces": {
        "sqlite": "gateway.traces.sqlite:open_sqlite",
    },
}

_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*)(?::|\?|$)")


@dataclass(frozen=True, slots=True)
class Options:
    """What a store is opened with besides its URL."""

    timeout_s: float = 0.1  # per backend call
    on_change: Callable[[bool], None] | None = None  # told when the backend goes down (False) and back up


def scheme(url: str) -> str:
    """`redis://h:6379/0` -> `redis`; `memory?max_entries=5` -> `memory`; `off` -> `off`."""
    match = _SCHEME.match(url)
    return match.group(1) if match else ""


def check(kind: str, url: str) -> str:
    """The URL, if the table has a backend for its scheme; else a ValueError naming the choices."""
    if scheme(url) not in BACKENDS[kind]:
        # the scheme only: a URL may carry a password
        raise ValueError(f"unknown {kind} backend {scheme(url) or '(no scheme)'!r}: use {', '.join(BACKENDS[kind])}")
    return url


def open_backend(kind: str, url: str, options: Options) -> Any:
    """Build the backend the table names for this URL's scheme (typed by the store's own opener)."""
    module, _, name = BACKENDS[kind][scheme(check(kind, url))].partition(":")
    factory: Callable[[str, Options], Any] = getattr(importlib.import_module(module), name)
    return factory(url, options)

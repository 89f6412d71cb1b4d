"""The running config: one `Live` snapshot, swapped whole by a reload, and the watcher that reloads.

A request reads `holder.live` once, so it runs wholly on the old config and policies or wholly on
the new ones, never a mix. A reload validates the config file and the whole policy directory off the
event loop; on any problem the last good snapshot stays and the error is kept for /admin/policies.
Reloads (the watcher's and /admin/reload's) run one at a time and read the files only once they hold
the lock, so a slow one can never swap in a snapshot older than what a quicker one already applied.

What the request path builds from a catalog (its attempts and reuse objects, which carry state such
as breakers and in-flight requests) comes from the `build` callable the holder is given: this module
knows them only as two type parameters, so config does not import the pipeline. A reload that
changes only the policies keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from gateway.config.load import BUILTIN, Config, load
from gateway.config.policies import PolicySet, load_policies
from gateway.config.problems import ConfigError
from gateway.config.watch import signature

if TYPE_CHECKING:
    from gateway.catalog import Catalog

log = logging.getLogger("gateway")

A = TypeVar("A")
R = TypeVar("R")
POLL_S = 1.0  # edits to the config file and policies/ take effect within about this long
RESTART_SECTIONS = ("server", "state", "telemetry", "prompts")  # read once, at start


@dataclass(frozen=True, slots=True)
class Live(Generic[A, R]):
    """Everything a reload replaces, swapped in as one object."""

    config: Config
    catalog: Catalog
    policies: PolicySet
    attempts: A
    reuse: R


class ConfigHolder(Generic[A, R]):
    def __init__(self, config: Config, catalog_for: Callable[[Config], Catalog], build: Callable[[Config, Catalog], tuple[A, R]]) -> None:
        self.started = config  # as started: RESTART_SECTIONS take effect at a restart
        self._catalog_for = catalog_for
        self._build = build
        catalog = catalog_for(config)
        self.live: Live[A, R] = Live(config, catalog, load_policies(config), *build(config, catalog))
        self.reload_error: str | None = None
        self._reloading = asyncio.Lock()

    def status(self) -> dict[str, Any]:
        """What /admin/policies shows: the versions serving now and the last reload's error."""
        live = self.live
        p = live.policies
        return {
            "version": p.version,
            "files": list(p.files),
            "open_mode": p.open is not None,
            "config": live.config.hash,
            "last_error": self.reload_error,
        }

    async def reload(self) -> None:
        async with self._reloading:
            await self._reload_now()

    async def _reload_now(self) -> None:
        old = self.live
        try:
            config, catalog, policies = await asyncio.to_thread(self._load, old.config)
        except ConfigError as exc:
            self.reload_error = str(exc)
            log.error("reload rejected, keeping config %s and policies %s:\n%s", old.config.hash, old.policies.version, exc)
            return
        self.reload_error = None
        if catalog is None:
            if policies.version == old.policies.version:
                return
            self.live = dataclasses.replace(old, policies=policies)
        else:
            self.live = Live(config, catalog, policies, *self._build(config, catalog))
            log.info("config reloaded: %s -> %s", old.config.hash, config.hash)
        if policies.version != old.policies.version:
            log.info("policies reloaded: version %s -> %s (%s)", old.policies.version, policies.version, ", ".join(policies.files))
        if policies.open is not None and old.policies.open is None:
            log.warning("OPEN MODE is now ON ([policies] open = true)")
        elif policies.open is None and old.policies.open is not None:
            log.info("OPEN MODE is now off ([policies] open = false)")

    def _load(self, current: Config) -> tuple[Config, Catalog | None, PolicySet]:
        """The config file as it is now (if it changed: with its catalog) and the policies against it."""
        config, catalog = current, None
        if current.source != BUILTIN:
            fresh = load(Path(current.source))
            if fresh.hash != current.hash:
                config, catalog = fresh, self._catalog_for(fresh)
                for section in RESTART_SECTIONS:
                    if getattr(fresh.file, section) != getattr(self.started.file, section):
                        log.warning("config [%s] changed: it takes effect at the next restart", section)
        return config, catalog, load_policies(config)

    def _watched(self) -> tuple[object, ...]:
        config = self.live.config
        stamp = None
        if config.source != BUILTIN:
            with contextlib.suppress(OSError):
                st = os.stat(config.source)
                stamp = (st.st_mtime_ns, st.st_size)
        return stamp, signature(config.path(config.file.policies.dir))

    async def watch(self) -> None:
        """Poll the config file and the policy directory; reload when either changed."""
        seen = await asyncio.to_thread(self._watched)
        while True:
            await asyncio.sleep(POLL_S)
            current = await asyncio.to_thread(self._watched)
            if current != seen:
                seen = current
                try:
                    await self.reload()
                except Exception:  # whatever went wrong, the watcher lives on and the last good set stays
                    log.exception("reload failed, keeping config %s and policies %s", self.live.config.hash, self.live.policies.version)

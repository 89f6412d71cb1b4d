"""The live prompt registry: one holder per process that swaps whole snapshots.

Two loops keep it current. Every `FILE_POLL_S` the prompt directory's (name, mtime, size) signature
is compared with the last one; on a change the whole directory is validated off the event loop and,
only if it is valid, merged and swapped in; otherwise the last good set stays and the error is kept
for `GET /admin/prompts`. Every `store.POLL_S` the store's generation counter is read; when it moved
(a push or label move here, on another worker or on another replica) the store is re-read and the
snapshot rebuilt. Refreshes are serialized by a lock, so an older read never overwrites a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from gateway.config import Config, ConfigError
from gateway.config.watch import signature
from gateway.errors import BadRequest, StoreUnavailable
from gateway.prompts.files import FileSet, load_files, prompt_dir
from gateway.prompts.registry import RUNTIME, Registry, Version, build, canonical, compile_version
from gateway.prompts.schema import LABEL, PROMPT_ID, VersionSpec
from gateway.prompts.store import POLL_S, StoreState, open_store

log = logging.getLogger("gateway.prompts")
FILE_POLL_S = 1.0


class PromptService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.files: FileSet = load_files(config)  # a broken set at startup is fatal, like the config
        self.stored = StoreState()
        self.registry: Registry = build(self.files.prompts, self.stored)
        self.store = open_store(config)
        self.error: str | None = None
        self._generation = -1
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.store.open()
        self._generation = await self.store.generation()
        self.stored = await self.store.snapshot()
        self.registry = build(self.files.prompts, self.stored)  # files that contradict the store at startup are fatal
        self._tasks = [asyncio.create_task(self._poll_store()), asyncio.create_task(self._watch_files())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()

    # keeping current -------------------------------------------------------------------------
    def _swap(self, files: FileSet, stored: StoreState) -> None:
        try:
            self.registry = build(files.prompts, stored)
        except ConfigError as exc:
            self.error = str(exc)
            log.error("prompt set rejected, keeping the last good one:\n%s", exc)
            return
        self.files, self.stored, self.error = files, stored, None

    async def refresh_store(self) -> None:
        async with self._lock:
            generation = await self.store.generation()
            stored = await self.store.snapshot()
            self._generation = generation
            self._swap(self.files, stored)

    async def reload_files(self) -> None:
        async with self._lock:
            try:
                files = await asyncio.to_thread(load_files, self.config)
            except ConfigError as exc:
                self.error = str(exc)
                log.error("prompt files rejected, keeping the last good set:\n%s", exc)
                return
            self._swap(files, self.stored)
            if self.error is None:
                log.info("prompt files reloaded: %s", ", ".join(files.files) or "(none)")

    async def _poll_store(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                if await self.store.generation() != self._generation:
                    await self.refresh_store()
            except StoreUnavailable:
                pass  # down or timed out: its breaker logs the outage and the recovery once; the last snapshot keeps serving
            except Exception:  # nothing else may end the loop either
                log.exception("prompt store poll failed")

    async def _watch_files(self) -> None:
        directory = prompt_dir(self.config)
        seen = self.files.signature
        while True:
            await asyncio.sleep(FILE_POLL_S)
            current = await asyncio.to_thread(signature, directory)
            if current != seen:
                seen = current
                await self.reload_files()

    # runtime changes -------------------------------------------------------------------------
    async def push(self, prompt_id: str, spec: VersionSpec) -> tuple[int, str, bool]:
        """Store a new version (answer number, hash, created); identical content answers the existing one."""
        if not re.fullmatch(PROMPT_ID, prompt_id):
            raise BadRequest("A prompt id is letters, digits, '_', '.', '-' (at most 128).", param="id", code="invalid_prompt_id")
        problems: list[tuple[tuple[str | int, ...], str]] = []
        version = compile_version(spec, 0, RUNTIME, frozenset(self.config.file.models), problems)
        if problems:
            lines = "; ".join(f"{'.'.join(str(p) for p in where)}: {message}" for where, message in problems)
            raise BadRequest(f"Invalid prompt version: {lines}", code="invalid_prompt")
        same = self._same_content(prompt_id, version)
        if same is not None:
            return same.number, same.hash, False
        file = self.files.prompts.get(prompt_id)
        floor = len(file.versions) if file else 0
        number, created = await self.store.add_version(prompt_id, version.hash, canonical(spec), floor)
        await self.refresh_store()
        return number, version.hash, created

    def _same_content(self, prompt_id: str, version: Version) -> Version | None:
        prompt = self.registry.prompts.get(prompt_id)
        return next((v for v in prompt.versions.values() if v.hash == version.hash), None) if prompt else None

    async def move_label(self, prompt_id: str, label: str, version: int, forced: bool) -> None:
        if not re.fullmatch(LABEL, label):
            raise BadRequest("A label starts with a letter: letters, digits, '_', '.', '-'.", param="label", code="invalid_label")
        self.registry.resolve(prompt_id, version=version)  # 404 for an unknown prompt or version
        await self.store.move_label(prompt_id, label, version, forced)
        await self.refresh_store()

    def status(self) -> dict[str, Any]:
        prompts = [
            {"id": p.id, "versions": list(p.versions), "labels": {name: label.version for name, label in p.labels.items()}}
            for p in self.registry.prompts.values()
        ]
        return {"prompts": prompts, "files": list(self.files.files), "store": self.store.name, "last_error": self.error}

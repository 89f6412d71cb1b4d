"""Where pushed versions and label moves persist: a tiny protocol, SQLite embedded, Redis shared.

The store holds only what happened at runtime; prompt files stay the source for their own versions.
Every change bumps a generation counter in the same transaction, and every gateway process polls that
counter every `POLL_S`, so a label moved through one replica (or one worker) is served by all of them
within a second. Version numbers are allocated by the store atomically, above `floor` (the number of
versions the prompt's file defines), and a push whose content hash is already stored answers the
existing number.

Which backend: Redis when `[state] limits` is a `redis://` (or `rediss://`) URL, the state every
replica must already share; otherwise SQLite in the directory of the SQLite trace store
(`prompts.db` beside `traces.db`), or `.gateway/prompts.db` under the config's directory.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import orjson
import redis.asyncio as aioredis

from gateway.config import Config
from gateway.redisurl import split_prefix

POLL_S = 0.5
T = TypeVar("T")
REDIS_PREFIX_ENV = "GATEWAY_PROMPTS_REDIS_PREFIX"  # to share one Redis database between deployments


@dataclass(frozen=True, slots=True)
class StoredVersion:
    number: int
    hash: str
    spec: bytes  # canonical JSON of the version's fields
    created_at: float


@dataclass(frozen=True, slots=True)
class StoredLabel:
    version: int
    moved_at: float
    forced: bool


@dataclass(frozen=True, slots=True)
class StoreState:
    versions: dict[str, tuple[StoredVersion, ...]] = field(default_factory=dict)
    labels: dict[str, dict[str, StoredLabel]] = field(default_factory=dict)


class PromptStore(Protocol):
    name: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def generation(self) -> int: ...
    async def snapshot(self) -> StoreState: ...
    async def add_version(self, prompt_id: str, digest: str, spec: bytes, floor: int) -> tuple[int, bool]:
        """Store a version; answer (number, created). Identical content answers the stored number."""
        ...

    async def move_label(self, prompt_id: str, label: str, version: int, forced: bool) -> float:
        """Point a label at a version; answer the time of the move."""
        ...


def open_store(config: Config) -> PromptStore:
    state = config.file.state
    if state.limits.startswith(("redis://", "rediss://")):
        url, prefix = split_prefix(state.limits)
        return RedisStore(url, os.environ.get(REDIS_PREFIX_ENV) or (f"{prefix}prompts:" if prefix else "gateway:prompts:"))
    return SQLiteStore(sqlite_path(config))


def sqlite_path(config: Config) -> Path:
    traces = config.file.state.traces
    if traces.startswith("sqlite:///"):
        return config.path(traces.removeprefix("sqlite:///")).parent / "prompts.db"
    return config.path(".gateway/prompts.db")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS prompt_versions (
    id TEXT NOT NULL, version INTEGER NOT NULL, hash TEXT NOT NULL, spec BLOB NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (id, version), UNIQUE (id, hash));
CREATE TABLE IF NOT EXISTS prompt_labels (
    id TEXT NOT NULL, label TEXT NOT NULL, version INTEGER NOT NULL, moved_at REAL NOT NULL, forced INTEGER NOT NULL,
    PRIMARY KEY (id, label));
CREATE TABLE IF NOT EXISTS prompt_label_log (
    id TEXT NOT NULL, label TEXT NOT NULL, version INTEGER NOT NULL, moved_at REAL NOT NULL, forced INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS prompt_generation (one INTEGER PRIMARY KEY CHECK (one = 1), value INTEGER NOT NULL);
INSERT OR IGNORE INTO prompt_generation VALUES (1, 0);
"""


class SQLiteStore:
    """stdlib sqlite3, one short-lived connection per operation, always in a worker thread."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._connect()
        try:
            return fn(db)
        finally:
            db.close()

    async def open(self) -> None:
        def create(db: sqlite3.Connection) -> None:
            db.executescript(_SCHEMA)

        self.path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._run, create)

    async def close(self) -> None:
        return None

    async def generation(self) -> int:
        def read(db: sqlite3.Connection) -> int:
            value: int = db.execute("SELECT value FROM prompt_generation").fetchone()[0]
            return value

        return await asyncio.to_thread(self._run, read)

    async def snapshot(self) -> StoreState:
        def read(db: sqlite3.Connection) -> StoreState:
            state = StoreState()
            versions: dict[str, list[StoredVersion]] = {}
            rows = db.execute("SELECT id, version, hash, spec, created_at FROM prompt_versions ORDER BY version")
            for pid, number, digest, spec, at in rows:
                versions.setdefault(pid, []).append(StoredVersion(number, digest, bytes(spec), at))
            state.versions.update({pid: tuple(vs) for pid, vs in versions.items()})
            for pid, label, number, at, forced in db.execute("SELECT id, label, version, moved_at, forced FROM prompt_labels"):
                state.labels.setdefault(pid, {})[label] = StoredLabel(number, at, bool(forced))
            return state

        return await asyncio.to_thread(self._run, read)

    async def add_version(self, prompt_id: str, digest: str, spec: bytes, floor: int) -> tuple[int, bool]:
        def write(db: sqlite3.Connection) -> tuple[int, bool]:
            with db:
                db.execute("BEGIN IMMEDIATE")  # the write lock first: no other process allocates between read and insert
                row = db.execute("SELECT version FROM prompt_versions WHERE id = ? AND hash = ?", (prompt_id, digest)).fetchone()
                if row is not None:
                    return int(row[0]), False
                top = db.execute("SELECT MAX(version) FROM prompt_versions WHERE id = ?", (prompt_id,)).fetchone()[0] or 0
                number = max(floor, top) + 1
                db.execute("INSERT INTO prompt_versions VALUES (?, ?, ?, ?, ?)", (prompt_id, number, digest, spec, time.time()))
                db.execute("UPDATE prompt_generation SET value = value + 1")
                return number, True

        return await asyncio.to_thread(self._run, write)

    async def move_label(self, prompt_id: str, label: str, version: int, forced: bool) -> float:
        def write(db: sqlite3.Connection) -> float:
            at = time.time()
            row = (prompt_id, label, version, at, int(forced))
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR REPLACE INTO prompt_labels VALUES (?, ?, ?, ?, ?)", row)
                db.execute("INSERT INTO prompt_label_log VALUES (?, ?, ?, ?, ?)", row)
                db.execute("UPDATE prompt_generation SET value = value + 1")
            return at

        return await asyncio.to_thread(self._run, write)


# KEYS: versions hash, hashes hash, ids set, generation. ARGV: id, digest, record JSON, floor.
_ADD_VERSION = """
local existing = redis.call('HGET', KEYS[2], ARGV[2])
if existing then return {tonumber(existing), 0} end
local top = tonumber(ARGV[4])
for _, v in ipairs(redis.call('HKEYS', KEYS[1])) do
  local n = tonumber(v)
  if n > top then top = n end
end
top = top + 1
redis.call('HSET', KEYS[1], top, ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], top)
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[4])
return {top, 1}
"""


class RedisStore:
    """Keys under one prefix: `ids` (set), `versions:{id}` and `hashes:{id}` and `labels:{id}` (hashes),
    `log:{id}` (list of label moves), `generation` (counter)."""

    name = "redis"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.client: aioredis.Redis | None = None

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def _redis(self) -> aioredis.Redis:
        if self.client is None:
            raise RuntimeError("the prompt store is not open")
        return self.client

    async def open(self) -> None:
        self.client = aioredis.from_url(self.url, decode_responses=True)
        await self.client.ping()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def generation(self) -> int:
        return int(await self._redis.get(self._key("generation")) or 0)

    async def snapshot(self) -> StoreState:
        r = self._redis
        ids = sorted(str(i) for i in await r.smembers(self._key("ids")))
        async with r.pipeline(transaction=True) as pipe:
            for pid in ids:
                pipe.hgetall(self._key("versions", pid))
                pipe.hgetall(self._key("labels", pid))
            replies = await pipe.execute()
        state = StoreState()
        for i, pid in enumerate(ids):
            versions, labels = replies[2 * i], replies[2 * i + 1]
            records = sorted((int(n), orjson.loads(raw)) for n, raw in versions.items())
            state.versions[pid] = tuple(StoredVersion(n, r["hash"], r["spec"].encode(), r["created_at"]) for n, r in records)
            moves = {k: orjson.loads(v) for k, v in labels.items()}
            state.labels[pid] = {k: StoredLabel(m["version"], m["moved_at"], m["forced"]) for k, m in moves.items()}
        return state

    async def add_version(self, prompt_id: str, digest: str, spec: bytes, floor: int) -> tuple[int, bool]:
        record = orjson.dumps({"hash": digest, "spec": spec.decode(), "created_at": time.time()})
        keys = [self._key("versions", prompt_id), self._key("hashes", prompt_id), self._key("ids"), self._key("generation")]
        number, created = await self._redis.eval(_ADD_VERSION, len(keys), *keys, prompt_id, digest, record, floor)
        return int(number), bool(created)

    async def move_label(self, prompt_id: str, label: str, version: int, forced: bool) -> float:
        at = time.time()
        move = orjson.dumps({"version": version, "moved_at": at, "forced": forced})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key("labels", prompt_id), label, move)
            pipe.rpush(self._key("log", prompt_id), orjson.dumps({"label": label, "version": version, "moved_at": at, "forced": forced}))
            pipe.sadd(self._key("ids"), prompt_id)
            pipe.incr(self._key("generation"))
            await pipe.execute()
        return at

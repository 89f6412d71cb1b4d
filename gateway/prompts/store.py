"""Where pushed versions and label moves persist: a tiny protocol, SQLite embedded, Redis shared.

The store holds only what happened at runtime; prompt files stay the source for their own versions.
Every change bumps a generation counter in the same transaction, and every gateway process polls that
counter every `POLL_S`, so a label moved through one replica (or one worker) is served by all of them
within a second. Version numbers are allocated by the store atomically, above `floor` (the number of
versions the prompt's file defines), and a push whose content hash is already stored answers the
existing number.

Which backend: the scheme of `[state] prompts` (`gateway.stores.BACKENDS["prompts"]`): `sqlite`
(`prompts.db` beside the SQLite trace store, or `.gateway/prompts.db` under the config's directory),
`sqlite:///path`, or `redis://host:port/db?prefix=...` (default prefix `gateway:prompts:`). Unset, it
follows `[state] limits`, the state every replica must already share: Redis when that is a Redis URL
(keys under its `?prefix=` followed by `prompts:`), SQLite otherwise.

Redis calls go through the shared Redis layer (`gateway/stores/redis.py`): a timeout per call
(`TIMEOUT_S`) and a breaker, failures raised as `StoreUnavailable`. A push or label move then answers
503; requests never wait on this store (they read the registry built from its last snapshot), and
the poll keeps that snapshot until Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import redis.asyncio as aioredis

from gateway.breaker import Breaker
from gateway.config import Config
from gateway.stores import Options, open_backend, scheme
from gateway.stores.redis import Connection, split_prefix, with_prefix

log = logging.getLogger("gateway.prompts")
POLL_S = 0.5
T = TypeVar("T")
# per Redis call: off the request path (admin calls and the poll), and a snapshot reads the whole
# store in one pipeline, so a second rather than the limits' 100 ms; a hung Redis still costs no more
TIMEOUT_S = 1.0
REDIS_PREFIX = "gateway:prompts:"
# Deprecated: before `[state] prompts` took `?prefix=`, this set the prefix. Still honoured when the
# prompts URL names none (a documented setting deployments may rely on), with a warning.
REDIS_PREFIX_ENV = "GATEWAY_PROMPTS_REDIS_PREFIX"


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
    """The backend `gateway.stores.BACKENDS["prompts"]` names for `store_url(config)`'s scheme."""
    store: PromptStore = open_backend("prompts", store_url(config), Options(TIMEOUT_S))
    return store


def store_url(config: Config) -> str:
    """`[state] prompts` (unset: following `limits`), with a SQLite path resolved and a Redis prefix set."""
    state = config.file.state
    url = state.prompts or _following(state.limits)
    if scheme(url) == "sqlite":
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
        return "sqlite:///" + str(config.path(path) if path else sqlite_path(config))
    rest, prefix = split_prefix(url)
    legacy = os.environ.get(REDIS_PREFIX_ENV)
    if legacy and (state.prompts is None or prefix is None):
        log.warning('%s is deprecated: set the prefix in [state] prompts = "redis://...?prefix=..."', REDIS_PREFIX_ENV)
        prefix = legacy
    return with_prefix(rest, prefix)


def _following(limits: str) -> str:
    """Where prompt state goes when `[state] prompts` is unset: beside the limits when those are in Redis."""
    if scheme(limits) not in ("redis", "rediss"):
        return "sqlite"
    rest, prefix = split_prefix(limits)
    return with_prefix(rest, prefix and prefix + "prompts:")


def open_sqlite(url: str, options: Options) -> PromptStore:
    return SQLiteStore(Path(url.removeprefix("sqlite:///")))


def open_redis(url: str, options: Options) -> PromptStore:
    rest, prefix = split_prefix(url)
    return RedisStore(rest, prefix or REDIS_PREFIX, options.timeout_s)


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

    def __init__(self, url: str, prefix: str, timeout_s: float = TIMEOUT_S, breaker: Breaker | None = None) -> None:
        self.prefix = prefix
        self.connection = Connection(url, prefix, timeout_s, breaker or Breaker("prompt store (Redis)"), decode=True)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def open(self) -> None:
        await self.connection.call(lambda redis: redis.ping())

    async def close(self) -> None:
        await self.connection.close()

    async def generation(self) -> int:
        return int(await self.connection.call(partial(_get, key=self._key("generation"))) or 0)

    async def snapshot(self) -> StoreState:
        ids = sorted(str(i) for i in await self.connection.call(partial(_members, key=self._key("ids"))))
        keys = [self._key(kind, pid) for pid in ids for kind in ("versions", "labels")]
        replies = await self.connection.call(partial(_hashes, keys=keys))
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
        args = (prompt_id, digest, record, floor)
        number, created = await self.connection.call(lambda redis: redis.eval(_ADD_VERSION, len(keys), *keys, *args))
        return int(number), bool(created)

    async def move_label(self, prompt_id: str, label: str, version: int, forced: bool) -> float:
        at = time.time()
        move = orjson.dumps({"version": version, "moved_at": at, "forced": forced})
        entry = orjson.dumps({"label": label, "version": version, "moved_at": at, "forced": forced})

        async def write(redis: aioredis.Redis) -> None:
            async with redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key("labels", prompt_id), label, move)
                pipe.rpush(self._key("log", prompt_id), entry)
                pipe.sadd(self._key("ids"), prompt_id)
                pipe.incr(self._key("generation"))
                await pipe.execute()

        await self.connection.call(write)
        return at


async def _get(redis: aioredis.Redis, key: str) -> Any:
    return await redis.get(key)


async def _members(redis: aioredis.Redis, key: str) -> Any:
    return await redis.smembers(key)


async def _hashes(redis: aioredis.Redis, keys: list[str]) -> list[Any]:
    """Every hash named, in one transaction: versions and labels read at the same instant."""
    async with redis.pipeline(transaction=True) as pipe:
        for key in keys:
            pipe.hgetall(key)
        replies: list[Any] = await pipe.execute()
    return replies

"""Where cached answers live: a two-method protocol with memory, Redis and disabled backends.

Chosen by the `[state] cache` URL scheme:
- `memory` (or `memory://?max_entries=N&max_bytes=B`): an LRU in this process, bounded by entries
  and by bytes, with lazy expiry. It is an OrderedDict rather than aiocache's SimpleMemoryCache,
  which has no bound on entries or bytes and no LRU order (wrapping it would mean keeping this very
  index beside it), arms one loop timer per entry for its TTL, and costs ~17 us per `get` in its
  plugin/timeout layers against ~0.1 us here: on a cache hit that is a measurable share of the work.
- `redis://host:port/db` (`rediss://` for TLS; `?prefix=...` sets the key prefix, default `gwc:`):
  shared by every replica. Lookups that arrive while one is in flight wait and go together as one
  `MGET` (at most `MAX_BATCH` keys): a redis-py command costs tens of microseconds of the worker's
  CPU, so under load a hit pays a share of one instead of one. Each call has a short timeout
  (100 ms), and a `Breaker` stops calling a failing Redis for a while, so an outage costs a request
  nothing but a flag check.
- `off`: nothing is ever stored.

A backend failure is raised as `CacheUnavailable`, the only error this module lets out; the caller
bypasses the cache for that request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from gateway.breaker import Breaker
from gateway.redisurl import split_prefix

log = logging.getLogger("gateway.cache")

MiB = 1024 * 1024
MAX_BATCH = 256  # keys per MGET


class CacheUnavailable(Exception):
    """The cache backend failed or is being skipped (breaker open)."""


class Store(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: int) -> None: ...
    async def close(self) -> None: ...


class DisabledStore:
    async def get(self, key: str) -> bytes | None:
        return None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryStore:
    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * MiB, clock: Callable[[], float] = time.monotonic) -> None:
        self._items: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._clock = clock
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item[1]

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        size = len(key) + len(value)
        if size > self._max_bytes:
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (self._clock() + ttl_s, value)
        self.bytes += size
        while len(self._items) > self._max_entries or self.bytes > self._max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        _, value = self._items.pop(key)
        self.bytes -= len(key) + len(value)

    async def close(self) -> None:
        self._items.clear()
        self.bytes = 0


class RedisStore:
    def __init__(self, url: str, prefix: str = "gwc:", timeout_s: float = 0.1, breaker: Breaker | None = None) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0)
        self._prefix = prefix
        self._timeout_s = timeout_s
        self.breaker = breaker or Breaker("cache backend")
        self._gets: list[tuple[str, asyncio.Future[Any]]] = []
        self._getter: asyncio.Task[None] | None = None

    async def get(self, key: str) -> bytes | None:
        if not self.breaker.allow():
            raise CacheUnavailable("breaker open")
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._gets.append((self._prefix + key, answer))
        if self._getter is None or self._getter.done():
            self._getter = loop.create_task(self._get_all())
        value = await answer
        return value if isinstance(value, bytes) else None

    async def _get_all(self) -> None:
        """Send the waiting lookups, `MAX_BATCH` keys an MGET, one MGET at a time, until none wait."""
        while self._gets:
            batch, self._gets = self._gets[:MAX_BATCH], self._gets[MAX_BATCH:]
            try:
                async with asyncio.timeout(self._timeout_s):
                    values = await self._redis.mget([key for key, _ in batch])
            except Exception as exc:  # redis, OS and timeout errors alike: translated here, once
                self.breaker.failure(exc)
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(CacheUnavailable(type(exc).__name__))
                continue
            self.breaker.success()
            for (_, answer), value in zip(batch, values, strict=True):
                if not answer.done():  # a request that gave up (its client left) no longer waits
                    answer.set_result(value)

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        if not self.breaker.allow():
            raise CacheUnavailable("breaker open")
        try:
            await self._redis.set(self._prefix + key, value, ex=ttl_s)
        except Exception as exc:
            self.breaker.failure(exc)
            raise CacheUnavailable(type(exc).__name__) from exc
        self.breaker.success()

    async def close(self) -> None:
        await self._redis.aclose()


def _memory(url: str) -> Store:
    query = parse_qs(urlsplit(url).query)
    entries = int(query.get("max_entries", ["10000"])[0])
    size = int(query.get("max_bytes", [str(64 * MiB)])[0])
    return MemoryStore(entries, size)


def _redis(url: str) -> Store:
    rest, prefix = split_prefix(url)
    return RedisStore(rest, prefix or "gwc:")


BACKENDS: dict[str, Callable[[str], Store]] = {
    "memory": _memory,
    "redis": _redis,
    "rediss": _redis,
    "off": lambda url: DisabledStore(),
}


def open_store(url: str) -> Store:
    scheme = url.partition(":")[0] if "://" in url else url.partition("?")[0]
    factory = BACKENDS.get(scheme)
    if factory is None:
        raise ValueError(f"unknown cache backend {url!r}: use memory, off, or a redis:// URL")
    return factory(url)

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
  (100 ms), and a breaker stops calling a failing Redis for a while, so an outage costs a request
  nothing but a flag check. Client, prefix, timeout, breaker and batching are the shared Redis
  layer's (`gateway/stores/redis.py`).
- `off`: nothing is ever stored.

The scheme table is `gateway.stores.BACKENDS["cache"]`. A backend failure is raised as
`CacheUnavailable` (the error tree's `StoreUnavailable`), the only error this module lets out; the
caller bypasses the cache for that request.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

from gateway.breaker import Breaker
from gateway.errors import StoreUnavailable
from gateway.stores import Options, open_backend
from gateway.stores.redis import Batcher, Connection, split_prefix

log = logging.getLogger("gateway.cache")

MiB = 1024 * 1024
MAX_BATCH = 256  # keys per MGET


CacheUnavailable = StoreUnavailable  # the name the cache's callers catch: every backend failure


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
        self.connection = Connection(url, prefix, timeout_s, breaker or Breaker("cache backend"))
        self.breaker = self.connection.breaker
        self._prefix = prefix
        self._gets: Batcher[str, bytes | str | None] = Batcher(self.connection, self.connection.redis.mget, MAX_BATCH)

    async def get(self, key: str) -> bytes | None:
        value = await self._gets.submit(self._prefix + key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: int) -> None:
        await self.connection.call(lambda redis: redis.set(self._prefix + key, value, ex=ttl_s))

    async def close(self) -> None:
        await self.connection.close()


def open_memory(url: str, options: Options) -> Store:
    query = parse_qs(urlsplit(url).query)
    entries = int(query.get("max_entries", ["10000"])[0])
    size = int(query.get("max_bytes", [str(64 * MiB)])[0])
    return MemoryStore(entries, size)


def open_redis(url: str, options: Options) -> Store:
    rest, prefix = split_prefix(url)
    return RedisStore(rest, prefix or "gwc:", options.timeout_s, Breaker("cache backend", on_change=options.on_change))


def open_disabled(url: str, options: Options) -> Store:
    return DisabledStore()


def open_store(url: str, options: Options | None = None) -> Store:
    """The backend `gateway.stores.BACKENDS["cache"]` names for this URL's scheme."""
    store: Store = open_backend("cache", url, options or Options())
    return store

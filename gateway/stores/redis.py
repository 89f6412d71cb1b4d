"""The one Redis layer under the cache, the limits and the prompt store.

A `Connection` is a redis-py client built from a `[state]` URL, the key prefix that URL names
(`?prefix=`, removed before redis-py sees the URL; each store has its own default), a per-call
timeout and a `Breaker`. Every call goes through it: `call()` for a single operation, a `Batcher`
for operations that arrive together. Either way a failure (refused, reset, timed out, a Redis error
reply) is counted by the breaker and translated here, once, into `StoreUnavailable` or
`StoreTimeout`; while the breaker is open a call fails at once without touching Redis, so an outage
costs a caller a flag check.

The `Batcher`: calls that arrive while one is in flight wait and go together as the next one (at
most `max_batch` items), so under load each caller pays a share of one redis-py command (tens of
microseconds of the worker's CPU) and of one round trip. No idle wait: a lone call goes at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis

from gateway.breaker import Breaker
from gateway.errors import StoreTimeout, StoreUnavailable

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item of a batch
R = TypeVar("R")


def split_prefix(url: str) -> tuple[str, str | None]:
    """-> (the URL redis-py is given, without `prefix`; the prefix, if the URL set one)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", [None])[0]
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True))), prefix


def with_prefix(url: str, prefix: str | None) -> str:
    """The URL with `?prefix=` set to this prefix (unchanged for None): `split_prefix`'s inverse."""
    if prefix is None:
        return url
    parts = urlsplit(url)
    query = parse_qs(parts.query) | {"prefix": [prefix]}
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True, safe=":")))


class Connection:
    """A client, its key prefix, its per-call timeout and its breaker (named for the logs and errors)."""

    def __init__(self, url: str, prefix: str, timeout_s: float, breaker: Breaker, *, decode: bool = False) -> None:
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0, decode_responses=decode
        )
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.breaker = breaker

    @classmethod
    def from_url(cls, url: str, default_prefix: str, timeout_s: float, breaker: Breaker, *, decode: bool = False) -> Connection:
        """`redis://host:port/db?prefix=p:` -> a connection whose keys start with `p:` (else the default)."""
        rest, prefix = split_prefix(url)
        return cls(rest, prefix or default_prefix, timeout_s, breaker, decode=decode)

    @property
    def up(self) -> bool:
        return self.breaker.up

    def allow(self) -> None:
        """Raise at once while the breaker is open (a probe is let through after its cooldown)."""
        if not self.breaker.allow():
            raise self.skipped()

    def skipped(self) -> StoreUnavailable:
        return StoreUnavailable(f"{self.breaker.name} unavailable: breaker open")

    def failed(self, exc: BaseException) -> StoreUnavailable:
        """Count a failed call and answer it as this layer's error: the edge where redis errors stop."""
        self.breaker.failure(exc)
        return self.unavailable(exc)

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        if isinstance(exc, TimeoutError | aioredis.TimeoutError):
            return StoreTimeout(f"{self.breaker.name} unavailable: no answer within {self.timeout_s * 1000:.0f} ms")
        return StoreUnavailable(f"{self.breaker.name} unavailable: {type(exc).__name__}")

    async def call(self, operation: Callable[[aioredis.Redis], Awaitable[T]], timeout_s: float | None = None) -> T:
        """One guarded operation (a command, a script, a pipeline): breaker, timeout, translation."""
        self.allow()
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                result = await operation(self.redis)
        except Exception as exc:  # redis, OS and timeout errors alike: translated here, once
            raise self.failed(exc) from exc
        self.breaker.success()
        return result

    async def close(self) -> None:
        await self.redis.aclose()


class Batcher(Generic[I, R]):
    """Items submitted while a `send` is in flight go together in the next one.

    `send(items)` answers one result per item, in order; a result may be an exception instance
    (a pipeline's per-command error), which the caller of `submit` receives as a value and judges.
    A failed `send` fails every item of its batch with the translated error.
    """

    __slots__ = ("_connection", "_max", "_queue", "_send", "_task")

    def __init__(self, connection: Connection, send: Callable[[list[I]], Awaitable[Sequence[R]]], max_batch: int) -> None:
        self._connection = connection
        self._send = send
        self._max = max_batch
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, item: I) -> asyncio.Future[R]:
        """Queue one item (raising at once while the breaker is open); await the answer."""
        if not self._connection.breaker.allow():  # inline, not allow(): this is every cache lookup's path
            raise self._connection.skipped()
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, answer))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return answer

    async def _drain(self) -> None:
        """Send the waiting items, `max_batch` at a time, one send at a time, until none wait."""
        connection = self._connection
        while self._queue:
            batch, self._queue = self._queue[: self._max], self._queue[self._max :]
            try:
                async with asyncio.timeout(connection.timeout_s):
                    results = await self._send([item for item, _ in batch])
            except Exception as exc:  # redis, OS and timeout errors alike: translated here, once
                connection.breaker.failure(exc)
                for _, answer in batch:
                    if not answer.done():
                        answer.set_exception(connection.unavailable(exc))
                continue
            connection.breaker.success()
            for (_, answer), result in zip(batch, results, strict=True):
                if not answer.done():  # a caller that gave up (its client left) no longer waits
                    answer.set_result(result)

    async def idle(self) -> None:
        """Wait until everything submitted so far has been sent (or has failed)."""
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

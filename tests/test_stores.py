"""The shared store layer: the scheme tables (gateway/stores) and the one Redis layer under the cache,
the limits and the prompt store (gateway/stores/redis.py): key prefix, per-call timeout, breaker
(3 failures open it, a probe after the cooldown closes it) and the batcher, against real Redis:
the one on 127.0.0.1:6379 (db 12, a unique prefix) and a private redis-server that a test pauses
(SIGSTOP: connections accepted, nothing answered) or kills.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest
from pydantic import ValidationError

from gateway import stores
from gateway.breaker import Breaker
from gateway.cache.store import DisabledStore, MemoryStore
from gateway.cache.store import RedisStore as RedisCache
from gateway.config.schema import StateSection
from gateway.errors import GatewayError, StoreTimeout, StoreUnavailable, Unavailable
from gateway.limits.rules import Check
from gateway.limits.store import MemoryLimits, RedisLimits
from gateway.prompts.store import RedisStore as RedisPrompts
from gateway.prompts.store import SQLiteStore
from gateway.stores.redis import Batcher, Connection, split_prefix, with_prefix
from tests.conftest import RedisServer, need_redis

SHARED = "redis://127.0.0.1:6379/12"
TIMEOUT_S = 0.3


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """Redis stops answering (its socket still accepts): the case a timeout exists for."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def connection(url: str, timeout_s: float = TIMEOUT_S, cooldown_s: float = 5.0, changes: list[bool] | None = None) -> Connection:
    on_change = changes.append if changes is not None else None
    return Connection.from_url(url, "default:", timeout_s, Breaker("test store", cooldown_s=cooldown_s, on_change=on_change))


@pytest.fixture
async def shared() -> AsyncIterator[Connection]:
    need_redis()
    conn = connection(f"{SHARED}?prefix=gwtest-{uuid.uuid4().hex[:10]}:", timeout_s=2.0)
    yield conn
    keys = [k async for k in conn.redis.scan_iter(match=conn.prefix + "*")]
    if keys:
        await conn.redis.delete(*keys)
    await conn.close()


# -- the scheme tables ----------------------------------------------------------------------------
def test_every_store_picks_its_backend_by_scheme() -> None:
    options = stores.Options()
    assert isinstance(stores.open_backend("cache", "memory://?max_entries=5", options), MemoryStore)
    assert isinstance(stores.open_backend("cache", "off", options), DisabledStore)
    assert isinstance(stores.open_backend("cache", "redis://127.0.0.1:6379/0", options), RedisCache)
    assert isinstance(stores.open_backend("limits", "memory", options), MemoryLimits)
    assert isinstance(stores.open_backend("limits", "rediss://127.0.0.1:6380/0", options), RedisLimits)
    assert isinstance(stores.open_backend("prompts", "sqlite:///tmp/x/prompts.db", options), SQLiteStore)
    assert isinstance(stores.open_backend("prompts", "redis://127.0.0.1:6379/0", options), RedisPrompts)
    assert [stores.scheme(u) for u in ("redis+cluster://h", "memory?max_entries=1", "off", "sqlite:///x")] == [
        "redis+cluster",
        "memory",
        "off",
        "sqlite",
    ]


def test_an_unknown_scheme_names_the_choices_and_never_the_url() -> None:
    with pytest.raises(ValueError, match=r"unknown limits backend 'memcached': use memory, redis, rediss") as info:
        stores.open_backend("limits", "memcached://user:s3cret@host", stores.Options())
    assert "s3cret" not in str(info.value)
    with pytest.raises(ValidationError) as invalid:
        StateSection.model_validate({"prompts": "postgres://user:s3cret@db/x"})
    (problem,) = invalid.value.errors()  # `gateway check` prints its loc and msg
    assert problem["loc"] == ("prompts",) and "postgres" in problem["msg"] and "s3cret" not in problem["msg"]
    assert StateSection.model_validate({"cache": "off", "limits": "redis://h:1/0?prefix=a:", "prompts": "sqlite"}).prompts == "sqlite"


# -- prefix ---------------------------------------------------------------------------------------
def test_the_prefix_comes_off_the_url_redis_py_sees() -> None:
    assert split_prefix("redis://h:6379/3?prefix=team-a:&ssl_cert_reqs=none") == ("redis://h:6379/3?ssl_cert_reqs=none", "team-a:")
    assert with_prefix("redis://h:6379/3?ssl_cert_reqs=none", "a&b:") == "redis://h:6379/3?ssl_cert_reqs=none&prefix=a%26b:"
    assert split_prefix(with_prefix("redis://h:6379/3", "a&b:")) == ("redis://h:6379/3", "a&b:")
    assert connection("redis://127.0.0.1:6379/0").prefix == "default:"
    conn = connection("rediss://127.0.0.1:6379/0?prefix=p:")
    assert conn.prefix == "p:" and "prefix" not in str(conn.redis.connection_pool.connection_kwargs)


async def test_every_redis_store_writes_under_its_prefix(shared: Connection) -> None:
    cache = stores.open_backend("cache", f"{SHARED}?prefix={shared.prefix}c:", stores.Options(2.0))
    limits = stores.open_backend("limits", f"{SHARED}?prefix={shared.prefix}l:", stores.Options(2.0))
    prompts = stores.open_backend("prompts", f"{SHARED}?prefix={shared.prefix}p:", stores.Options(2.0))
    try:
        await cache.set("k", b"v", 30)
        assert (await limits.admit([Check("rate", "rpm:x", 5, 1, 60_000)], "")).admitted
        await prompts.open()
        await prompts.move_label("bot", "production", 1, False)
        keys = sorted([k.decode() async for k in shared.redis.scan_iter(match=shared.prefix + "*")])
        p = shared.prefix
        assert keys == sorted([f"{p}c:k", f"{p}l:rpm:x", f"{p}p:generation", f"{p}p:ids", f"{p}p:labels:bot", f"{p}p:log:bot"])
    finally:
        for store in (cache, limits, prompts):
            await store.close()


# -- timeout and breaker ---------------------------------------------------------------------------
async def test_a_paused_redis_costs_one_timeout_then_the_breaker_skips_it(own_redis: RedisServer) -> None:
    changes: list[bool] = []
    conn = connection(f"redis://127.0.0.1:{own_redis.port}/0", cooldown_s=1.0, changes=changes)
    assert await conn.call(lambda r: r.set("k", b"v")) is True
    with paused(own_redis):
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreTimeout, match="test store unavailable: no answer within 300 ms"):
                await conn.call(lambda r: r.get("k"))
            assert time.monotonic() - started < TIMEOUT_S + 1.0  # bounded by the timeout, not by Redis
        assert not conn.up and changes == [False]
        started = time.monotonic()
        for _ in range(100):  # open: no call reaches Redis
            with pytest.raises(StoreUnavailable, match="breaker open"):
                await conn.call(lambda r: r.get("k"))
        assert time.monotonic() - started < 0.5
    await asyncio.sleep(1.1)  # past the cooldown: one probe goes through, and it answers
    assert await conn.call(lambda r: r.get("k")) == b"v"
    assert conn.up and changes == [False, True]
    await conn.close()


async def test_a_failed_probe_opens_the_breaker_again(own_redis: RedisServer) -> None:
    conn = connection(f"redis://127.0.0.1:{own_redis.port}/0", cooldown_s=0.5)
    own_redis.kill()
    for _ in range(3):
        with pytest.raises(StoreUnavailable) as info:
            await conn.call(lambda r: r.ping())
        assert not isinstance(info.value, StoreTimeout)  # refused, not timed out
    await asyncio.sleep(0.6)
    with pytest.raises(StoreUnavailable) as probe:
        await conn.call(lambda r: r.ping())
    assert "breaker open" not in str(probe.value)  # the probe went to Redis
    with pytest.raises(StoreUnavailable, match="breaker open"):
        await conn.call(lambda r: r.ping())  # and failed: open again, for another cooldown
    await conn.close()


def test_store_errors_are_in_the_error_tree() -> None:
    error = StoreTimeout("prompt store (Redis) unavailable: no answer within 1000 ms")
    assert isinstance(error, StoreUnavailable) and isinstance(error, Unavailable) and isinstance(error, GatewayError)
    assert error.status == 503 and error.headers() == {"retry-after": "1"}
    assert error.body() == {"error": {"message": str(error), "type": "service_unavailable", "param": None, "code": "store_timeout"}}


# -- the batcher ------------------------------------------------------------------------------------
async def test_calls_arriving_while_one_is_in_flight_go_together(shared: Connection) -> None:
    sent: list[list[str]] = []

    async def send(keys: list[str]) -> list[bytes | str | None]:
        sent.append(keys)
        values: list[bytes | str | None] = await shared.redis.mget(keys)
        return values

    await shared.redis.set(shared.prefix + "k7", b"seven")
    batcher: Batcher[str, bytes | str | None] = Batcher(shared, send, max_batch=50)
    first = batcher.submit(shared.prefix + "k0")  # alone: sent at once, no idle wait
    await asyncio.sleep(0)
    assert sent == [[shared.prefix + "k0"]]  # in flight: the next ones wait for it and go together
    rest = [batcher.submit(f"{shared.prefix}k{i}") for i in range(1, 120)]
    values = await asyncio.gather(first, *rest)
    assert values == [b"seven" if i == 7 else None for i in range(120)]  # each its own answer, in order
    assert [len(keys) for keys in sent] == [1, 50, 50, 19]
    await batcher.idle()


async def test_a_failed_batch_fails_each_of_its_calls_and_a_caller_may_leave(own_redis: RedisServer) -> None:
    conn = connection(f"redis://127.0.0.1:{own_redis.port}/0")
    batcher: Batcher[str, bytes | str | None] = Batcher(conn, conn.redis.mget, max_batch=10)
    with paused(own_redis):
        started = time.monotonic()
        leaving = batcher.submit("a")
        waiting = [batcher.submit(k) for k in "bcd"]
        leaving.cancel()  # its client went away: the batch goes on without it
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, StoreTimeout) for r in results)
        assert time.monotonic() - started < TIMEOUT_S + 1.0  # one send (a b c d), bounded by the timeout
    assert conn.breaker.up  # one failure: below the threshold of 3
    assert await batcher.submit("absent") is None
    await conn.close()

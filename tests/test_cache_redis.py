"""The Redis cache backend: the store contract, replicas sharing it, and Redis failing mid-run.

Uses the Redis on 127.0.0.1:6379 (db 14, a unique key prefix) for the contract and replica tests,
and a redis-server of its own on a free port for the outage test, which kills it. Without Redis
these tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.cache import entry
from gateway.cache.store import CacheUnavailable, MemoryStore, RedisStore, Store, open_store
from tests.cache_support import POLICY, client, config
from tests.conftest import GatewayFactory, RedisServer, free_port, need_redis
from tests.fakes.openai_upstream import FakeOpenAI
from tests.traceutil import metrics, value, wait_for

SHARED = "redis://127.0.0.1:6379/14"


def prefix() -> str:
    return f"gwtest-{uuid.uuid4().hex[:10]}:"


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "redis":
        need_redis()
        backend: Store = open_store(f"{SHARED}?prefix={prefix()}")
    else:
        backend = MemoryStore()
    yield backend
    await backend.close()


async def test_store_contract(store: Store) -> None:
    assert await store.get("absent") is None
    await store.set("k", b"\x00value\n", 60)
    assert await store.get("k") == b"\x00value\n"
    await store.set("k", b"other", 60)
    assert await store.get("k") == b"other"
    await store.set("short", b"x", 1)
    await asyncio.sleep(1.1)
    assert await store.get("short") is None


async def test_concurrent_lookups_share_mgets_and_each_gets_its_own_value() -> None:
    need_redis()
    import redis.asyncio as redis

    store = open_store(f"{SHARED}?prefix={prefix()}")
    raw = redis.Redis.from_url(SHARED)
    try:
        for i in range(0, 300, 2):  # every other key is absent
            await store.set(f"k{i}", f"value {i}".encode(), 30)

        async def mgets() -> int:
            return int((await raw.info("commandstats")).get("cmdstat_mget", {}).get("calls", 0))

        before = await mgets()
        values = await asyncio.gather(*(store.get(f"k{i}") for i in range(300)))
        assert values == [f"value {i}".encode() if i % 2 == 0 else None for i in range(300)]
        assert 2 <= await mgets() - before <= 10  # 300 lookups in a handful of MGETs of at most 256 keys
    finally:
        await raw.aclose()
        await store.close()


async def test_redis_keys_carry_the_prefix_and_a_ttl() -> None:
    need_redis()
    import redis.asyncio as redis

    p = prefix()
    store = open_store(f"{SHARED}?prefix={p}")
    await store.set("t:alpha:abc", b"v", 30)
    raw = redis.Redis.from_url(SHARED)
    try:
        assert await raw.get(p + "t:alpha:abc") == b"v"
        assert 0 < await raw.ttl(p + "t:alpha:abc") <= 30
        await raw.delete(p + "t:alpha:abc")
    finally:
        await raw.aclose()
        await store.close()


async def test_a_dead_redis_fails_fast_behind_the_breaker() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    for _ in range(3):
        with pytest.raises(CacheUnavailable):
            await store.get("k")
    started = time.perf_counter()
    for _ in range(1000):
        with pytest.raises(CacheUnavailable, match="breaker open"):
            await store.get("k")
    assert time.perf_counter() - started < 0.5
    await store.close()


def test_replicas_share_the_redis_cache(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    need_redis()
    url = f"{SHARED}?prefix={prefix()}"
    one = gateway_factory(config(fake.base_url, state_cache=url), {"p.toml": POLICY})
    two = gateway_factory(config(fake.base_url, state_cache=url), {"p.toml": POLICY})
    messages = [{"role": "user", "content": "replica " + uuid.uuid4().hex}]
    first = client(one).chat.completions.with_raw_response.create(model="cached", messages=messages)
    second = client(two).chat.completions.with_raw_response.create(model="cached", messages=messages)
    assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert len(fake.requests) == 1


def test_a_damaged_or_older_entry_is_answered_as_a_miss(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    """Whatever the bytes under a key (an entry of an older format, garbage), a hit never fails a
    request: it is answered upstream, counted as a decode error, and the entry is written afresh."""
    need_redis()
    import redis

    p = prefix()
    gw = gateway_factory(config(fake.base_url, state_cache=f"{SHARED}?prefix={p}"), {"p.toml": POLICY})
    messages = [{"role": "user", "content": "damaged " + uuid.uuid4().hex}]
    assert client(gw).chat.completions.with_raw_response.create(model="cached", messages=messages).headers["x-gateway-cache"] == "miss"
    raw = redis.Redis.from_url(SHARED)
    try:
        (key,) = raw.keys(p + "*")
        good = raw.get(key)
        assert good is not None
        for bad in (b"3 5 0\n" + good.partition(b"\n")[2], b'["x", 1, 0, null, null]\n{}', b"\xff\x00garbage"):
            raw.set(key, bad, ex=60)
            reply = client(gw).chat.completions.with_raw_response.create(model="cached", messages=messages)
            assert reply.headers["x-gateway-cache"] == "miss"
            assert reply.parse().choices[0].message.content == "echo: " + messages[0]["content"]
            wait_for(lambda: _entry(raw.get(key)), what="the entry written afresh")
        assert client(gw).chat.completions.with_raw_response.create(model="cached", messages=messages).headers["x-gateway-cache"] == "hit"
    finally:
        raw.close()
    assert len(fake.requests) == 4
    assert value(metrics(gw), "gateway_cache_errors_total", operation="decode") == 3


def _entry(value: bytes | None) -> bool:
    try:
        return value is not None and entry.decode(value).response_id is not None
    except ValueError:
        return False


def test_requests_still_succeed_when_redis_stops_mid_run(gateway_factory: GatewayFactory, fake: FakeOpenAI, own_redis: RedisServer) -> None:
    gw = gateway_factory(config(fake.base_url, state_cache=f"redis://127.0.0.1:{own_redis.port}/0"), {"p.toml": POLICY})
    messages = [{"role": "user", "content": "outage " + uuid.uuid4().hex}]

    def ask() -> str:
        raw = client(gw).chat.completions.with_raw_response.create(model="cached", messages=messages)
        assert raw.parse().choices[0].message.content == "echo: " + messages[0]["content"]
        return raw.headers["x-gateway-cache"]

    assert [ask(), ask()] == ["miss", "hit"]
    own_redis.kill()
    started = time.monotonic()
    results = [ask() for _ in range(20)]
    assert set(results) == {"bypass"}
    assert time.monotonic() - started < 5
    assert len(fake.requests) == 21
    metrics = httpx.get(gw.url + "/metrics").text
    failures = [line for line in metrics.splitlines() if line.startswith('gateway_cache_errors_total{operation="get"}')]
    assert failures and float(failures[0].split()[-1]) >= 1
    assert "cache backend" in gw.log()

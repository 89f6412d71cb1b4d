"""max_concurrent leases expire one by one: each lease lives until its own deadline (plus grace),
whatever the requests admitted beside it do. One contract, run against the memory backend and the
Redis on 127.0.0.1:6379 (db 13, a unique key prefix per test).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis

from gateway.limits.rules import Check, Settlement
from gateway.limits.store import LimitStore, RedisLimits, open_limits
from tests.conftest import need_redis

SHARED = "redis://127.0.0.1:6379/13"
LONG_MS = 600_000  # a long stream's deadline plus grace
SHORT_MS = 1000  # a quick request's; the tests wait well past it, and need nothing slower than it (the machine may be loaded)
PAST_SHORT_S = 1.8


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[LimitStore]:
    if request.param == "redis":
        need_redis()
        backend = open_limits(f"{SHARED}?prefix=gwtest-{uuid.uuid4().hex[:10]}:", timeout_s=1.0)
    else:
        backend = open_limits("memory")
    yield backend
    await backend.close()


def conc(limit: int, lifetime_ms: int) -> list[Check]:
    return [Check("conc", "conc:team:t", limit, 0, lifetime_ms)]


async def settled(store: LimitStore, lease: str) -> None:
    store.settle([Settlement("conc", "conc:team:t", 0, 0, 0, lease)])
    if isinstance(store, RedisLimits):
        await store.idle()


async def test_short_requests_never_expire_a_long_lease(store: LimitStore) -> None:
    assert (await store.admit(conc(2, LONG_MS), "long")).admitted
    for i in range(20):  # quick requests come and go beside the long stream
        assert (await store.admit(conc(2, SHORT_MS), f"quick-{i}")).admitted
        await settled(store, f"quick-{i}")
    await asyncio.sleep(PAST_SHORT_S)  # past every quick request's lifetime, well inside the long one's
    assert (await store.admit(conc(2, SHORT_MS), "a")).admitted
    denied = await store.admit(conc(2, SHORT_MS), "b")
    assert not denied.admitted and denied.retry_ms == 1000.0  # the long lease still counts: the cap holds


async def test_a_lapsed_lease_stops_counting_and_only_it(store: LimitStore) -> None:
    assert (await store.admit(conc(2, LONG_MS), "long")).admitted
    assert (await store.admit(conc(2, SHORT_MS), "lost")).admitted  # never settled: its process died
    assert not (await store.admit(conc(2, SHORT_MS), "c")).admitted
    await asyncio.sleep(PAST_SHORT_S)  # "lost" is past its deadline and grace: its slot is free again
    assert (await store.admit(conc(2, LONG_MS), "c")).admitted
    assert not (await store.admit(conc(2, LONG_MS), "d")).admitted  # "long" and "c" hold both slots
    await settled(store, "long")
    assert (await store.admit(conc(2, LONG_MS), "d")).admitted


async def test_the_redis_set_lives_as_long_as_its_longest_lease() -> None:
    need_redis()
    prefix = f"gwtest-{uuid.uuid4().hex[:10]}:"
    store = RedisLimits(SHARED, prefix, timeout_s=1.0)
    try:
        assert (await store.admit(conc(5, LONG_MS), "long")).admitted
        assert (await store.admit(conc(5, SHORT_MS), "quick")).admitted
        ttl = redis.Redis.from_url(SHARED).pttl(f"{prefix}conc:team:t")
        assert LONG_MS - 60_000 < ttl <= LONG_MS  # a short admission never shortens the key's life
    finally:
        await store.close()

"""One contract for every prompt store backend (SQLite embedded, real Redis), plus what the live
service builds from a store: a registry that merges file versions, pushes and label moves."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.config import Config
from gateway.config.load import build as build_config
from gateway.errors import StoreTimeout, StoreUnavailable
from gateway.prompts.registry import FilePrompt, build, compile_version
from gateway.prompts.schema import VersionSpec
from gateway.prompts.service import PromptService
from gateway.prompts.store import (
    POLL_S,
    REDIS_PREFIX_ENV,
    TIMEOUT_S,
    PromptStore,
    RedisStore,
    SQLiteStore,
    StoredLabel,
    StoreState,
    open_store,
    sqlite_path,
    store_url,
)
from tests.conftest import RedisServer
from tests.fakes.openai_upstream import FakeOpenAI
from tests.test_prompts import SUPPORT, push, served, start
from tests.test_stores import paused

REDIS_URL = "redis://127.0.0.1:6379/15"


async def redis_or_skip() -> None:
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except OSError as exc:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"Redis is required under CI: {exc}") from None
        pytest.skip(f"no Redis at {REDIS_URL}")
    finally:
        await client.aclose()


async def drop_prefix(prefix: str) -> None:
    client = aioredis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PromptStore]:
    backend: PromptStore
    if request.param == "redis":
        await redis_or_skip()
        prefix = f"test:prompts:{uuid.uuid4().hex}:"
        backend = RedisStore(REDIS_URL, prefix)
    else:
        backend = SQLiteStore(tmp_path / "state" / "prompts.db")
    await backend.open()
    yield backend
    await backend.close()
    if isinstance(backend, RedisStore):
        await drop_prefix(backend.prefix)


async def test_an_empty_store(store: PromptStore) -> None:
    assert await store.snapshot() == StoreState()
    assert await store.generation() == 0


async def test_versions_are_numbered_above_the_floor_and_deduplicated_by_hash(store: PromptStore) -> None:
    assert await store.add_version("bot", "h1", b'{"a":1}', 2) == (3, True)
    assert await store.add_version("bot", "h1", b'{"a":1}', 2) == (3, False)
    assert await store.add_version("bot", "h2", b'{"a":2}', 2) == (4, True)
    assert await store.add_version("other", "h1", b'{"a":1}', 0) == (1, True)
    state = await store.snapshot()
    assert [(v.number, v.hash, v.spec) for v in state.versions["bot"]] == [(3, "h1", b'{"a":1}'), (4, "h2", b'{"a":2}')]
    assert await store.generation() == 3  # the duplicate changed nothing


async def test_concurrent_pushes_never_share_a_number(store: PromptStore) -> None:
    results = await asyncio.gather(*(store.add_version("bot", f"h{i}", b"{}", 0) for i in range(20)))
    assert sorted(n for n, _ in results) == list(range(1, 21))


async def test_label_moves_last_one_wins_and_keep_the_forced_flag(store: PromptStore) -> None:
    before = await store.generation()
    await store.move_label("bot", "production", 1, False)
    at = await store.move_label("bot", "production", 2, True)
    label = (await store.snapshot()).labels["bot"]["production"]
    assert (label.version, label.forced, label.moved_at) == (2, True, at)
    assert await store.generation() == before + 2


async def test_sqlite_state_survives_a_new_instance(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "p.db")
    await first.open()
    await first.add_version("bot", "h", b"{}", 0)
    await first.move_label("bot", "production", 1, False)
    second = SQLiteStore(tmp_path / "p.db")
    await second.open()
    state = await second.snapshot()
    assert state.versions["bot"][0].number == 1 and state.labels["bot"]["production"].version == 1


def config(tmp_path: Path, state: dict[str, str] | None = None) -> Config:
    raw = {
        "providers": {"demo": {"kind": "mock"}},
        "models": {"demo-echo": {"targets": [{"provider": "demo", "model": "echo"}]}},
        "state": state or {"traces": "sqlite:///var/traces.db"},
    }
    return build_config(raw, str(tmp_path / "config.toml"), tmp_path)


def test_the_backend_is_chosen_by_state_prompts_else_by_state_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REDIS_PREFIX_ENV, raising=False)
    embedded = config(tmp_path)
    assert sqlite_path(embedded) == tmp_path / "var" / "prompts.db"
    assert store_url(embedded) == f"sqlite:///{tmp_path}/var/prompts.db"
    assert isinstance(open_store(embedded), SQLiteStore)
    shared = config(tmp_path, {"limits": REDIS_URL, "cache": "memory"})
    assert isinstance(open_store(shared), RedisStore) and store_url(shared) == REDIS_URL  # default prefix gateway:prompts:
    cache_only = config(tmp_path, {"cache": REDIS_URL})
    assert isinstance(open_store(cache_only), SQLiteStore)
    # following limits, the prompt keys sit under the limits prefix; [state] prompts says where, prefix included
    assert store_url(config(tmp_path, {"limits": f"{REDIS_URL}?prefix=team-a:"})) == f"{REDIS_URL}?prefix=team-a:prompts:"
    own = config(tmp_path, {"limits": f"{REDIS_URL}?prefix=team-a:", "prompts": "redis://127.0.0.1:6379/9?prefix=p:"})
    assert store_url(own) == "redis://127.0.0.1:6379/9?prefix=p:"
    store = open_store(own)
    assert isinstance(store, RedisStore) and store.prefix == "p:"
    assert (
        store_url(config(tmp_path, {"limits": REDIS_URL, "prompts": "sqlite:///elsewhere/p.db"})) == f"sqlite:///{tmp_path}/elsewhere/p.db"
    )
    assert store_url(config(tmp_path, {"limits": REDIS_URL, "prompts": "sqlite"})) == f"sqlite:///{tmp_path}/.gateway/prompts.db"


def test_the_deprecated_prefix_variable_still_applies_where_config_names_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REDIS_PREFIX_ENV, "legacy:")
    assert store_url(config(tmp_path, {"limits": f"{REDIS_URL}?prefix=team-a:"})) == f"{REDIS_URL}?prefix=legacy:"
    named = config(tmp_path, {"prompts": f"{REDIS_URL}?prefix=p:"})
    assert store_url(named) == f"{REDIS_URL}?prefix=p:"  # the config's own prefix wins


async def test_a_paused_redis_bounds_pushes_and_the_service_keeps_its_last_state(tmp_path: Path, own_redis: RedisServer) -> None:
    """Before the shared layer a push to a paused Redis waited forever (no timeout) and so did the poll."""
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "bot.toml").write_text(FILE)
    url = f"redis://127.0.0.1:{own_redis.port}/0?prefix=t:"
    service = PromptService(config(tmp_path, {"prompts": url, "traces": "sqlite:///var/traces.db"}))
    await service.start()
    try:
        assert (await service.push("bot", version("two")))[:2] == (2, service.registry.prompts["bot"].versions[2].hash)
        await service.move_label("bot", "production", 2, False)
        with paused(own_redis):
            started = time.monotonic()
            with pytest.raises(StoreTimeout) as info:
                await service.push("bot", version("three"))
            assert time.monotonic() - started < TIMEOUT_S + 2  # one timeout, not a hang
            assert info.value.status == 503 and "prompt store (Redis) unavailable" in info.value.message
            store = service.store
            assert isinstance(store, RedisStore)
            deadline = time.monotonic() + 10 * (POLL_S + TIMEOUT_S)
            while store.connection.up:  # the poll times out too, and the third failure opens the breaker
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="breaker open"):
                await service.move_label("bot", "production", 1, False)
            assert time.monotonic() - started < 0.5
            assert service.registry.resolve("bot").version.number == 2  # requests keep the last known state
    finally:
        await service.stop()


FILE = """
[prompts.bot]
labels = { production = 1 }
[[prompts.bot.versions]]
model = "demo-echo"
messages = [{ role = "user", content = "one" }]
"""


async def test_the_service_merges_files_pushes_and_moves(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "bot.toml").write_text(FILE)
    service = PromptService(config(tmp_path))
    await service.start()
    try:
        spec = version("two")
        number, digest, created = await service.push("bot", spec)
        assert (number, created) == (2, True)
        assert await service.push("bot", spec) == (2, digest, False)
        assert (await service.push("bot", version("one")))[:2] == (1, service.registry.prompts["bot"].versions[1].hash)
        await service.move_label("bot", "production", 2, False)
        assert service.registry.resolve("bot").version.number == 2
        # a file that redefines a pushed version is refused; the registry keeps serving
        redefined = '[[prompts.bot.versions]]\nmodel = "demo-echo"\nmessages = [{ role = "user", content = "other" }]\n'
        (tmp_path / "prompts" / "bot.toml").write_text(FILE + redefined)
        await service.reload_files()
        assert service.error is not None and "version 2 was pushed at runtime with other content" in service.error
        assert service.registry.resolve("bot").version.spec.messages[0].content == "two"
    finally:
        await service.stop()


def version(content: str) -> VersionSpec:
    return VersionSpec.model_validate({"model": "demo-echo", "messages": [{"role": "user", "content": content}]})


def test_a_label_points_where_it_was_put_last_file_or_store() -> None:
    versions = tuple(compile_version(version(c), n, "f.toml", None, []) for n, c in ((1, "a"), (2, "b")))
    file = FilePrompt("f.toml", versions, {"production": 1}, mtime=100.0)
    older = StoreState(labels={"bot": {"production": StoredLabel(2, 50.0, False)}})
    newer = StoreState(labels={"bot": {"production": StoredLabel(2, 150.0, False)}})
    assert build({"bot": file}, older).resolve("bot").version.number == 1
    assert build({"bot": file}, newer).resolve("bot").version.number == 2


def test_a_paused_redis_never_holds_a_request_and_a_push_answers_503(upstream: FakeOpenAI, tmp_path: Path, own_redis: RedisServer) -> None:
    url = f"redis://127.0.0.1:{own_redis.port}/0?prefix=e2e:"
    gw = start(tmp_path / "gw", upstream, {"support.toml": SUPPORT}, state=f'prompts = "{url}"')
    try:
        assert push(gw, "support-bot", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "v3"}]}).status_code == 201
        assert served(gw) == "support-bot@1"
        with paused(own_redis):
            started = time.monotonic()
            refused = push(gw, "support-bot", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "v4"}]})
            assert time.monotonic() - started < TIMEOUT_S + 3
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["type"] == "service_unavailable"
            assert refused.json()["error"]["code"] in ("store_timeout", "store_unavailable")
            for _ in range(5):  # labels resolve from the last snapshot, never from Redis
                started = time.monotonic()
                assert served(gw) == "support-bot@1"
                assert time.monotonic() - started < 2
        deadline = time.monotonic() + 30
        while (
            again := push(gw, "support-bot", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "v4"}]})
        ).status_code == 503:
            assert time.monotonic() < deadline, "the prompt store never came back"
            time.sleep(0.5)
        # the timed-out push may have landed when Redis resumed (its command was already sent): the same
        # content then answers its stored number
        assert again.status_code in (200, 201) and again.json()["version"] == 4
    finally:
        gw.stop(timeout=10)

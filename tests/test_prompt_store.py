"""One contract for every prompt store backend (SQLite embedded, real Redis), plus what the live
service builds from a store: a registry that merges file versions, pushes and label moves."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.config import Config
from gateway.config.load import build as build_config
from gateway.prompts.registry import FilePrompt, build, compile_version
from gateway.prompts.schema import VersionSpec
from gateway.prompts.service import PromptService
from gateway.prompts.store import PromptStore, RedisStore, SQLiteStore, StoredLabel, StoreState, open_store, sqlite_path

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


def test_the_backend_is_chosen_by_state_limits(tmp_path: Path) -> None:
    embedded = config(tmp_path)
    assert sqlite_path(embedded) == tmp_path / "var" / "prompts.db"
    assert isinstance(open_store(embedded), SQLiteStore)
    shared = config(tmp_path, {"limits": REDIS_URL, "cache": "memory"})
    assert isinstance(open_store(shared), RedisStore)
    cache_only = config(tmp_path, {"cache": REDIS_URL})
    assert isinstance(open_store(cache_only), SQLiteStore)


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

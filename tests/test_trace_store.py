"""The trace store's contract (gateway/traces/store.py: `TraceStore`), run against every backend.

Each test takes `backend`: where a fresh store of one kind lives. A backend joins by adding one
entry to `BACKENDS` (its URL for a fresh store, a way to open it with other migrations, and a URL it
cannot reach); nothing else here names a backend. Rows are made the way the writer makes them
(`rows.row` of a record as a worker sends it).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.traces import rows, sqlite
from gateway.traces.store import COLUMNS, Filters, Inserted, NoStore, StoreError, TraceStore, open_store

NOW = time.time()


@dataclass(frozen=True)
class Backend:
    url: str  # a store nothing was written to yet
    with_migrations: Callable[[Sequence[str]], TraceStore]  # the same store, with this schema history
    migrations: tuple[str, ...]  # the backend's own
    unreachable_url: str  # a store that fails as a whole


def sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "traces.db"
    (tmp_path / "a-file").write_text("not a directory")
    return Backend(
        url=f"sqlite:///{path}",
        with_migrations=lambda migrations: sqlite.SQLiteTraces(path, migrations),
        migrations=sqlite.MIGRATIONS,
        unreachable_url=f"sqlite:///{tmp_path}/a-file/traces.db",
    )


BACKENDS: dict[str, Callable[[Path], Backend]] = {"sqlite": sqlite_backend}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def store(backend: Backend) -> Iterator[TraceStore]:
    traces = open_store(backend.url)
    assert traces.migrate() == 0
    yield traces
    traces.close()


def row(request_id: str, started_at: float = NOW, **fields: Any) -> tuple[Any, ...]:
    record = {
        "request_id": request_id,
        "trace_id": "a" * 32,
        "span_id": "b" * 16,
        "started_at": started_at,
        "duration_s": 0.01,
        "operation": "chat",
        "status": 200,
        "model": "m",
        "team": "alpha",
        **fields,
    }
    return rows.row(record, 4096)


def ids(found: Sequence[dict[str, Any]] | Iterator[dict[str, Any]]) -> list[str]:
    return [r["request_id"] for r in found]


# -- writing and reading back ------------------------------------------------------------------


def test_a_row_reads_back_as_written(store: TraceStore) -> None:
    full = row(
        "r1",
        started_at=1_700_000_000.25,
        stream=True,
        key_name="alpha-app",
        target="p/up",
        capture="full",
        usage={"prompt_tokens": 3, "completion_tokens": 4, "cached_tokens": 1, "estimated": False},
        cost_usd=0.5,
        priced=True,
        request_body={"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2},
        response_json='{"choices": [{"message": {"role": "assistant", "content": "yo"}}]}',
        attempts=[{"target": "p/up", "model": "m", "status": 200, "latency_s": 0.002, "started_s": 0.001}],
    )
    assert store.insert_batch([full]) == Inserted(1)
    got = store.get("r1")
    assert got is not None and set(got) == {"seq", *COLUMNS}
    assert got["started_at"] == "2023-11-14T22:13:20.250Z" and got["duration_ms"] == 10.0
    assert got["stream"] is True and got["priced"] is True and got["usage_estimated"] is False
    assert (got["input_tokens"], got["output_tokens"], got["cached_tokens"], got["cost_usd"]) == (3, 4, 1, 0.5)
    assert got["request"]["messages"] == [{"role": "user", "content": "hi"}] and got["params"] == {"temperature": 0.2}
    assert got["response"]["choices"][0]["message"]["content"] == "yo"
    assert got["attempts"] == [
        {"target": "p/up", "model": "m", "status": 200, "error_type": None, "latency_ms": 2.0, "started_ms": 1.0, "server_address": None}
    ]
    assert store.page(Filters(), 10).rows == [got] == list(store.scan(Filters()))


def test_a_bad_row_in_a_batch_costs_only_itself(store: TraceStore) -> None:
    batch = [row("ok-1"), row("too-big", status=2**64 - 1), row("ok-2"), row("a-dict", model={"not": "text"}), row("ok-3")]
    inserted = store.insert_batch(batch)
    assert inserted.stored == 3 and [i for i, _ in inserted.refused] == [1, 3]
    assert all(isinstance(why, Exception) for _, why in inserted.refused)
    assert ids(store.scan(Filters())) == ["ok-1", "ok-2", "ok-3"]
    assert store.insert_batch([row("ok-4")]) == Inserted(1)  # the store goes on
    assert store.insert_batch([]) == Inserted(0)


def test_a_store_that_fails_as_a_whole_raises_store_error(backend: Backend) -> None:
    broken = open_store(backend.unreachable_url)
    with pytest.raises(StoreError) as failed:
        broken.migrate()
    assert not isinstance(failed.value, NoStore)
    with pytest.raises(StoreError) as failed:
        broken.insert_batch([row("r")])
    assert failed.value.done == Inserted()
    broken.close()


def test_reading_a_store_never_written_is_no_store(backend: Backend) -> None:
    unwritten = open_store(backend.url)
    for read in (lambda: unwritten.page(Filters(), 5), lambda: list(unwritten.scan(Filters())), lambda: unwritten.get("r")):
        with pytest.raises(NoStore):
            read()
    unwritten.close()


# -- queries -----------------------------------------------------------------------------------

FIXTURE: list[tuple[str, int, dict[str, Any]]] = [  # request id, seconds before NOW, fields
    ("a", 300, {"model": "gpt", "team": "alpha", "status": 200, "cache": "miss", "prompt_id": "bot", "prompt_version": 3}),
    ("b", 250, {"model": "gpt", "team": "beta", "status": 404, "prompt_id": "bot", "prompt_version": 4, "prompt_label": "production"}),
    ("c", 200, {"model": "echo", "team": "alpha", "status": 503, "cache": "hit", "prompt_id": "other", "prompt_version": 3}),
    ("d", 150, {"model": "echo", "team": "beta", "status": 200, "cache": "hit"}),
    ("e", 100, {"model": "gpt", "team": None, "status": 429}),
    ("f", 50, {"model": "gpt", "team": "alpha", "status": 201, "prompt_id": "bot", "prompt_version": 4, "prompt_label": "production"}),
]


@pytest.fixture
def filled(store: TraceStore) -> TraceStore:
    assert store.insert_batch([row(rid, NOW - ago, **fields) for rid, ago, fields in FIXTURE]).stored == len(FIXTURE)
    return store


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(), "abcdef"),
        (Filters(model="echo"), "cd"),
        (Filters(team="alpha"), "acf"),
        (Filters(cache="hit"), "cd"),
        (Filters(cache="bypass"), "bef"),
        (Filters(status="200"), "ad"),
        (Filters(status="2xx"), "adf"),
        (Filters(status="4xx"), "be"),
        (Filters(status="5xx"), "c"),
        (Filters(status="error"), "bce"),
        (Filters(prompt="bot"), "abf"),
        (Filters(prompt="bot@4"), "bf"),
        (Filters(prompt="bot@3"), "a"),
        (Filters(prompt="bot@production"), "bf"),
        (Filters(prompt="other@production"), ""),
        (Filters(since=NOW - 200), "cdef"),
        (Filters(until=NOW - 200), "ab"),
        (Filters(since=NOW - 250, until=NOW - 100, model="gpt"), "b"),
        (Filters(team="alpha", status="error", since=NOW - 1000), "c"),
    ],
)
def test_each_filter_selects_its_rows_in_page_and_scan(filled: TraceStore, filters: Filters, expected: str) -> None:
    assert ids(filled.scan(filters)) == list(expected)  # oldest first
    assert ids(filled.page(filters, 100).rows) == list(reversed(expected))  # newest first
    assert ids(filled.page(filters, 100, ascending=True).rows) == list(expected)


def test_after_seq_gives_only_newer_rows(filled: TraceStore) -> None:
    third = filled.page(Filters(), 100, ascending=True).rows[2]
    assert ids(filled.scan(Filters(after_seq=third["seq"]))) == ["d", "e", "f"]
    assert ids(filled.scan(Filters(after_seq=filled.page(Filters(), 1).rows[0]["seq"]))) == []


def test_a_status_that_means_nothing_is_refused_before_any_backend() -> None:
    for bad in ("weird", "6xx", "2XX", "20000", ""):
        with pytest.raises(ValueError, match="status must be"):
            Filters(status=bad)


@pytest.mark.parametrize("ascending", [False, True])
def test_pages_follow_the_cursor_to_the_end(store: TraceStore, ascending: bool) -> None:
    store.insert_batch([row(f"r{i:02}", NOW + i) for i in range(11)])
    seen: list[str] = []
    cursor = None
    while True:
        page = store.page(Filters(), 3, cursor, ascending)
        assert len(page.rows) == 3 or page.next_cursor is None
        seen += ids(page.rows)
        if (cursor := page.next_cursor) is None:
            break
    expected = [f"r{i:02}" for i in range(11)]
    assert seen == (expected if ascending else expected[::-1])
    exact = store.page(Filters(), 11, None, ascending)
    assert len(exact.rows) == 11 and exact.next_cursor is None  # no empty page after an exact fit
    assert store.page(Filters(), 0) == ([], None)
    filtered = store.page(Filters(team="beta"), 3)
    assert filtered == ([], None)


def test_team_scoping_and_the_newest_row_of_a_shared_request_id(store: TraceStore) -> None:
    """Clients choose their `x-request-id`, so teams can share one: `get` answers the newest row,
    and with a team, that team's newest; another team's row is never answered for it."""
    store.insert_batch([row("shared", team="alpha", status=200), row("shared", team="beta", status=201)])
    store.insert_batch([row("shared", team="alpha", status=202), row("alone", team="beta")])
    newest = store.get("shared")
    assert newest is not None and (newest["team"], newest["status"]) == ("alpha", 202)
    beta = store.get("shared", "beta")
    assert beta is not None and (beta["team"], beta["status"]) == ("beta", 201)
    assert store.get("alone", "alpha") is None and store.get("shared", "gamma") is None and store.get("nope") is None
    assert [r["status"] for r in store.page(Filters(team="alpha"), 10).rows] == [202, 200]
    assert ids(store.scan(Filters(team="beta"))) == ["shared", "alone"]


# -- retention ---------------------------------------------------------------------------------


def test_retention_by_age(store: TraceStore) -> None:
    store.insert_batch([row("old-1", NOW - 40 * 86400), row("old-2", NOW - 31 * 86400), row("new", NOW - 29 * 86400)])
    assert store.prune(retention_days=30, max_rows=1000, now=NOW) == 2
    assert ids(store.scan(Filters())) == ["new"]
    assert store.prune(retention_days=30, max_rows=1000, now=NOW) == 0


def test_retention_by_rows_keeps_the_newest(store: TraceStore) -> None:
    store.insert_batch([row(f"old-{i}", NOW - 40 * 86400) for i in range(3)] + [row(f"r{i}", NOW - 20 + i) for i in range(17)])
    assert store.prune(retention_days=30, max_rows=10, now=NOW) == 10
    assert ids(store.scan(Filters())) == [f"r{i}" for i in range(7, 17)]
    store.insert_batch([row("latest")])
    assert store.prune(retention_days=30, max_rows=10, now=NOW) == 1
    assert ids(store.page(Filters(), 1).rows) == ["latest"]


# -- schema ------------------------------------------------------------------------------------


def test_the_schema_migrates_forward_and_refuses_a_newer_store(backend: Backend) -> None:
    first = backend.with_migrations(backend.migrations)
    assert first.migrate() == 0
    first.insert_batch([row("r1")])
    first.close()
    later = (*backend.migrations, "ALTER TABLE traces ADD COLUMN score REAL; CREATE INDEX traces_score ON traces (score)")
    upgraded = backend.with_migrations(later)
    assert upgraded.migrate() == len(backend.migrations)
    got = upgraded.get("r1")
    assert got is not None and got["score"] is None  # the old row, with the new column
    assert upgraded.migrate() == len(later)  # idempotent
    upgraded.close()
    older = backend.with_migrations(backend.migrations)
    with pytest.raises(StoreError, match="newer"):
        older.migrate()
    older.close()
    assert open_store(backend.url).get("r1") is not None  # refusing changed nothing


def test_sqlite_keeps_its_version_where_sqlite_tools_see_it(tmp_path: Path) -> None:
    traces = open_store(f"sqlite:///{tmp_path}/t.db")
    traces.migrate()
    traces.close()
    assert sqlite3.connect(tmp_path / "t.db").execute("PRAGMA user_version").fetchone()[0] == len(sqlite.MIGRATIONS)


# -- the scheme table --------------------------------------------------------------------------


def test_the_backend_is_chosen_by_the_url_scheme(tmp_path: Path) -> None:
    assert isinstance(open_store(f"sqlite:///{tmp_path}/t.db"), sqlite.SQLiteTraces)
    with pytest.raises(ValueError, match="unknown traces backend 'mysql': use sqlite") as unknown:
        open_store("mysql://user:s3cret@db/traces")
    assert "s3cret" not in str(unknown.value)
    with pytest.raises(StoreError, match="ABSOLUTE"):
        open_store("sqlite:///relative/t.db")  # the config's relative form is resolved before (`store.located`)

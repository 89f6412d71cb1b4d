"""The SQLite trace store: one row per request, a versioned schema, retention, and the queries.

Only the trace writer process writes (one writer for every worker); the admin API and the CLI read,
concurrently, thanks to WAL. The schema version lives in `PRAGMA user_version`; `migrate` applies
every migration above it in one transaction on start, and refuses a store newer than the code.
Rows are ordered by `seq` (insertion order): pages go newest first and the cursor is the last `seq`.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

COLUMNS = (
    "request_id", "trace_id", "span_id", "parent_span_id", "started_at", "duration_ms", "ttft_ms", "upstream_ms", "overhead_ms",
    "operation", "stream", "key_name", "team", "model", "target", "response_model", "response_id", "route_rule",
    "prompt_id", "prompt_version", "prompt_label", "prompt_hash", "policy_version", "cache", "status", "error_type", "finish_reason",
    "input_tokens", "output_tokens", "cached_tokens", "usage_estimated", "cost_usd", "priced", "attempts", "params", "capture",
    "request", "response",
)  # fmt: skip

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE traces (
        seq INTEGER PRIMARY KEY,
        request_id TEXT NOT NULL, trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT,
        started_at REAL NOT NULL, duration_ms REAL NOT NULL, ttft_ms REAL, upstream_ms REAL, overhead_ms REAL,
        operation TEXT NOT NULL, stream INTEGER NOT NULL, key_name TEXT, team TEXT,
        model TEXT, target TEXT, response_model TEXT, response_id TEXT, route_rule TEXT,
        prompt_id TEXT, prompt_version INTEGER, prompt_label TEXT, prompt_hash TEXT, policy_version TEXT,
        cache TEXT NOT NULL, status INTEGER NOT NULL, error_type TEXT, finish_reason TEXT,
        input_tokens INTEGER, output_tokens INTEGER, cached_tokens INTEGER, usage_estimated INTEGER,
        cost_usd REAL, priced INTEGER NOT NULL,
        attempts TEXT NOT NULL, params TEXT NOT NULL, capture TEXT NOT NULL, request TEXT, response TEXT
    );
    CREATE INDEX traces_request_id ON traces (request_id);
    CREATE INDEX traces_started_at ON traces (started_at);
    """,
)
JSON_COLUMNS = ("attempts", "params", "request", "response")
INSERT = f"INSERT INTO traces ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class StoreError(Exception):
    pass


def sqlite_path(url: str, resolve: Any) -> Path:
    """`sqlite:///rel/path` (relative to the config file) or `sqlite:////abs/path`."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"unsupported trace store {url!r}: expected sqlite:///PATH")
    path: Path = resolve(url.removeprefix("sqlite:///"))
    return path


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        if not path.exists():
            raise StoreError(f"no trace store at {path}")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Bring the schema up to `len(migrations)`; returns the version found before."""
    found: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > len(migrations):
        raise StoreError(f"the trace store has schema version {found}, newer than this gateway's ({len(migrations)})")
    if found < len(migrations):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for script in migrations[found:]:
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {len(migrations)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def insert(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    conn.execute("BEGIN")
    try:
        conn.executemany(INSERT, rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def prune(conn: sqlite3.Connection, retention_days: float, max_rows: int, now: float | None = None) -> int:
    """Delete rows older than the retention, then the oldest beyond `max_rows`; returns how many went."""
    cutoff = (now if now is not None else time.time()) - retention_days * 86400
    before = conn.total_changes
    conn.execute("DELETE FROM traces WHERE started_at < ?", (cutoff,))
    # seq only grows and age removes the oldest rows, so the newest `max_rows` are those above
    # max(seq) - max_rows: an index lookup, where OFFSET max_rows would walk that many rows
    conn.execute("DELETE FROM traces WHERE seq <= (SELECT max(seq) FROM traces) - ?", (max_rows,))
    return conn.total_changes - before


# reading -------------------------------------------------------------------------------------


def parse_time(value: str) -> float:
    """ISO 8601 (a date, or a date and time; UTC unless it says otherwise) or epoch seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time or epoch seconds: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Filters:
    since: float | None = None
    until: float | None = None
    model: str | None = None
    team: str | None = None
    status: str | None = None  # "200", or a class: "2xx", "4xx", "5xx", or "error" (>= 400)
    prompt: str | None = None  # "id" or "id@version"
    cache: str | None = None
    after_seq: int | None = None  # only rows newer than this (tail)

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        for column, value in (("model", self.model), ("team", self.team), ("cache", self.cache)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if self.since is not None:
            clauses.append("started_at >= ?")
            args.append(self.since)
        if self.until is not None:
            clauses.append("started_at < ?")
            args.append(self.until)
        if self.after_seq is not None:
            clauses.append("seq > ?")
            args.append(self.after_seq)
        if self.status is not None:
            clauses.append(self._status())
            if self.status.isdigit():
                args.append(int(self.status))
        if self.prompt is not None:
            pid, _, version = self.prompt.partition("@")
            clauses.append("prompt_id = ?")
            args.append(pid)
            if version:
                clauses.append("(prompt_version = ? OR prompt_label = ?)")
                args.extend([int(version) if version.isdigit() else -1, version])
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def _status(self) -> str:
        status = self.status or ""
        if status.isdigit():
            return "status = ?"
        if status == "error":
            return "status >= 400"
        if len(status) == 3 and status[0] in "12345" and status[1:] == "xx":
            low = int(status[0]) * 100
            return f"status >= {low} AND status < {low + 100}"
        raise ValueError(f"status must be a code, 2xx/4xx/5xx or 'error', not {status!r}")


def page(
    conn: sqlite3.Connection, filters: Filters, limit: int, cursor: int | None = None, ascending: bool = False
) -> tuple[list[dict[str, Any]], int | None]:
    """`limit` rows past `cursor`, newest first (or, `ascending`, oldest first); returns them and the
    next cursor (None at the end)."""
    where, args = filters.where()
    if cursor is not None:
        where += (" AND " if where else " WHERE ") + ("seq > ?" if ascending else "seq < ?")
        args.append(cursor)
    order = "ASC" if ascending else "DESC"
    found = conn.execute(f"SELECT * FROM traces{where} ORDER BY seq {order} LIMIT ?", [*args, limit + 1])
    names = _names(found)
    rows = found.fetchall()
    more = len(rows) > limit
    return [to_dict(names, row) for row in rows[:limit]], (rows[limit - 1][0] if more and limit else None)


def scan(conn: sqlite3.Connection, filters: Filters) -> Iterator[dict[str, Any]]:
    """Every matching row, oldest first."""
    where, args = filters.where()
    found = conn.execute(f"SELECT * FROM traces{where} ORDER BY seq ASC", args)
    names = _names(found)
    for row in found:
        yield to_dict(names, row)


def get(conn: sqlite3.Connection, request_id: str, team: str | None = None) -> dict[str, Any] | None:
    """The newest row with this request id, of `team` when given. Clients may send their own
    `x-request-id`, so one id can have rows of several teams; the `request_id` index finds them all
    and `seq` (the rowid, which that index carries) picks the newest."""
    if team is None:
        found = conn.execute("SELECT * FROM traces WHERE request_id = ? ORDER BY seq DESC LIMIT 1", (request_id,))
    else:
        found = conn.execute("SELECT * FROM traces WHERE request_id = ? AND team = ? ORDER BY seq DESC LIMIT 1", (request_id, team))
    row = found.fetchone()
    return to_dict(_names(found), row) if row is not None else None


def _names(cursor: sqlite3.Cursor) -> list[str]:
    return [d[0] for d in cursor.description]


def to_dict(names: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(names, row, strict=True))
    for column in JSON_COLUMNS:
        if record[column] is not None:
            record[column] = orjson.loads(record[column])
    for column in ("stream", "usage_estimated", "priced"):
        if record[column] is not None:
            record[column] = bool(record[column])
    record["started_at"] = iso(record["started_at"])
    return record

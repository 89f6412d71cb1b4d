"""The SQLite trace store (`sqlite:////abs/path`): one file, one writer, readers alongside (WAL).

The writer process holds the one read-write connection (`migrate` opens it); readers (the admin
API, in threads, and the CLI) open a read-only connection per call, so they never create the file
and any thread may read. The schema version lives in `PRAGMA user_version`; `migrate` applies every
migration above it in one transaction, and refuses a store newer than the code. `seq` is the rowid:
insertion order. A batch is one transaction; a row SQLite refuses rolls it back, and the rows then
go one transaction each, so only that row is refused. sqlite3 errors stop here, as `StoreError`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gateway.stores import Options
from gateway.traces.store import COLUMNS, Filters, Inserted, NoStore, Page, Row, StoreError, to_dict

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
INSERT = f"INSERT INTO traces ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# the errors of one row rather than of the store (a value SQLite cannot bind, a constraint)
ROW_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    OverflowError,
    ValueError,
    TypeError,
)


def open_sqlite(url: str, options: Options) -> SQLiteTraces:
    if not url.startswith("sqlite:////"):
        raise StoreError(f"unsupported trace store {url!r}: expected sqlite:////ABSOLUTE/PATH")
    return SQLiteTraces(Path(url.removeprefix("sqlite:///")))


class SQLiteTraces:
    def __init__(self, path: Path, migrations: Sequence[str] = MIGRATIONS) -> None:
        self.path = path
        self.migrations = tuple(migrations)
        self._conn: sqlite3.Connection | None = None

    def _failed(self, exc: BaseException, done: Inserted | None = None) -> StoreError:
        return StoreError(f"{self.path}: {type(exc).__name__}: {exc}", done)

    # writing: the writer process -----------------------------------------------------------
    def _writer(self) -> sqlite3.Connection:
        try:
            return self._conn or self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=5, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def migrate(self) -> int:
        conn = self._writer()
        try:
            return self._migrate(conn)
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc

    def _migrate(self, conn: sqlite3.Connection) -> int:
        found: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if found > len(self.migrations):
            raise StoreError(f"the trace store has schema version {found}, newer than this gateway's ({len(self.migrations)})")
        if found < len(self.migrations):
            with _transaction(conn, "BEGIN IMMEDIATE"):
                for script in self.migrations[found:]:
                    for statement in filter(str.strip, script.split(";")):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {len(self.migrations)}")
        return found

    def insert_batch(self, rows: Sequence[Row]) -> Inserted:
        conn = self._writer()
        try:
            with _transaction(conn):
                conn.executemany(INSERT, rows)
        except ROW_ERRORS:  # one row the store refuses must not take the batch with it
            return self._one_by_one(conn, rows)
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc
        return Inserted(len(rows))

    def _one_by_one(self, conn: sqlite3.Connection, rows: Sequence[Row]) -> Inserted:
        stored, refused = 0, []
        for i, row in enumerate(rows):
            try:
                with _transaction(conn):
                    conn.execute(INSERT, row)
            except ROW_ERRORS as exc:
                refused.append((i, exc))
                continue
            except (sqlite3.Error, OSError) as exc:
                raise self._failed(exc, Inserted(stored, tuple(refused))) from exc
            stored += 1
        return Inserted(stored, tuple(refused))

    def prune(self, retention_days: float, max_rows: int, now: float | None = None) -> int:
        cutoff = (now if now is not None else time.time()) - retention_days * 86400
        conn = self._writer()
        try:
            before = conn.total_changes
            conn.execute("DELETE FROM traces WHERE started_at < ?", (cutoff,))
            # seq only grows and age removes the oldest rows, so the newest `max_rows` are those above
            # max(seq) - max_rows: an index lookup, where OFFSET max_rows would walk that many rows
            conn.execute("DELETE FROM traces WHERE seq <= (SELECT max(seq) FROM traces) - ?", (max_rows,))
            return conn.total_changes - before
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    # reading: any process, any thread ------------------------------------------------------
    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            raise NoStore(f"no trace store at {self.path}")
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            yield conn
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the writer has not created it yet
                raise NoStore(f"no trace store at {self.path} yet") from None
            raise self._failed(exc) from exc
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        finally:
            conn.close()

    def page(self, filters: Filters, limit: int, cursor: int | None = None, ascending: bool = False) -> Page:
        where, args = filters.where()
        if cursor is not None:
            where += (" AND " if where else " WHERE ") + ("seq > ?" if ascending else "seq < ?")
            args.append(cursor)
        order = "ASC" if ascending else "DESC"
        with self._reader() as conn:
            found = conn.execute(f"SELECT * FROM traces{where} ORDER BY seq {order} LIMIT ?", [*args, limit + 1])
            names = _names(found)
            rows = found.fetchall()
        more = len(rows) > limit
        return Page([to_dict(names, row) for row in rows[:limit]], rows[limit - 1][0] if more and limit else None)

    def scan(self, filters: Filters) -> Iterator[dict[str, Any]]:
        where, args = filters.where()
        with self._reader() as conn:
            found = conn.execute(f"SELECT * FROM traces{where} ORDER BY seq ASC", args)
            names = _names(found)
            for row in found:
                yield to_dict(names, row)

    def get(self, request_id: str, team: str | None = None) -> dict[str, Any] | None:
        # the `request_id` index finds every row of the id, and carries `seq` (the rowid) to pick the newest
        by_team = "" if team is None else " AND team = ?"
        with self._reader() as conn:
            found = conn.execute(
                f"SELECT * FROM traces WHERE request_id = ?{by_team} ORDER BY seq DESC LIMIT 1",
                (request_id,) if team is None else (request_id, team),
            )
            row = found.fetchone()
            return to_dict(_names(found), row) if row is not None else None


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, begin: str = "BEGIN") -> Iterator[None]:
    conn.execute(begin)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # a failed COMMIT may have ended it already
            conn.execute("ROLLBACK")
        raise


def _names(cursor: sqlite3.Cursor) -> list[str]:
    return [d[0] for d in cursor.description]

"""The trace store, as every backend offers it: one row per request, a versioned schema, retention,
and the queries the admin API and the CLI make.

A backend is a class with the methods of `TraceStore`, opened from the `[state] traces` URL by the
scheme table (`gateway.stores.BACKENDS["traces"]`: `sqlite` -> `gateway/traces/sqlite.py`). The
writer process is the only one that migrates, inserts and prunes; the admin API and the CLI only
read, at the same time. Rows go in as tuples in `COLUMNS` order (`rows.py` makes them) and come
out as dicts (`to_dict`): the columns, the store's `seq` (insertion order: pages go newest first,
the cursor is the last `seq`), `started_at` as ISO 8601, JSON columns decoded.

What a backend promises, checked against each by `tests/test_trace_store.py`: a batch is stored
whole, except rows the backend refuses (a value it cannot hold), each refused alone and reported;
a failure of the store itself is a `StoreError` saying what of the batch got in before it; reading a
store nothing was ever written to is `NoStore`; `migrate` refuses a store newer than the code.
Feedback, datasets and evaluation runs will be more tables beside `traces`, in the same migrations.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson

from gateway import stores

COLUMNS = (
    "request_id", "trace_id", "span_id", "parent_span_id", "started_at", "duration_ms", "ttft_ms", "upstream_ms", "overhead_ms",
    "operation", "stream", "key_name", "team", "model", "target", "response_model", "response_id", "route_rule",
    "prompt_id", "prompt_version", "prompt_label", "prompt_hash", "policy_version", "cache", "status", "error_type", "finish_reason",
    "input_tokens", "output_tokens", "cached_tokens", "usage_estimated", "cost_usd", "priced", "attempts", "params", "capture",
    "request", "response",
)  # fmt: skip
JSON_COLUMNS = ("attempts", "params", "request", "response")
BOOL_COLUMNS = ("stream", "usage_estimated", "priced")

Row = tuple[Any, ...]  # one value per column of COLUMNS, in that order


@dataclass(frozen=True, slots=True)
class Inserted:
    """What a batch became: how many rows were stored, and the rows refused (index in the batch, why)."""

    stored: int = 0
    refused: tuple[tuple[int, Exception], ...] = ()


class StoreError(Exception):
    """The store as a whole failed (unreachable, read-only, full, a schema this code cannot use).
    Raised by `insert_batch`, `done` says what that batch got before the failure."""

    def __init__(self, message: str, done: Inserted | None = None) -> None:
        super().__init__(message)
        self.done = done or Inserted()


class NoStore(StoreError):
    """Nothing was ever written there: no file, no table. The admin API answers it as no rows."""


class Page(NamedTuple):
    rows: list[dict[str, Any]]
    next_cursor: int | None  # None: no row past these


class TraceStore(Protocol):
    def migrate(self) -> int:
        """Create the store or bring its schema up to this code's; returns the version found before."""
        ...

    def insert_batch(self, rows: Sequence[Row]) -> Inserted:
        """Store every row the backend can hold; the rest are refused one by one, never the batch."""
        ...

    def prune(self, retention_days: float, max_rows: int, now: float | None = None) -> int:
        """Remove rows older than the retention, then the oldest beyond `max_rows`; returns how many went."""
        ...

    def page(self, filters: Filters, limit: int, cursor: int | None = None, ascending: bool = False) -> Page:
        """`limit` rows past `cursor`, newest first (or, `ascending`, oldest first)."""
        ...

    def scan(self, filters: Filters) -> Iterator[dict[str, Any]]:
        """Every matching row, oldest first (an export's read: the rows are not held at once)."""
        ...

    def get(self, request_id: str, team: str | None = None) -> dict[str, Any] | None:
        """The newest row with this request id, of `team` when given. Clients may send their own
        `x-request-id`, so one id can have rows of several teams (and several of one team)."""
        ...

    def close(self) -> None: ...


def open_store(url: str) -> TraceStore:
    """The backend `gateway.stores.BACKENDS["traces"]` names for this URL's scheme (not yet opened:
    the writer calls `migrate`, readers just read)."""
    store: TraceStore = stores.open_backend("traces", url, stores.Options())
    return store


def located(url: str, resolve: Callable[[str], Path]) -> str:
    """The URL with a file's path made absolute (`resolve`: against the config file's directory).
    `sqlite:///rel/path` is relative to the config, `sqlite:////abs/path` absolute."""
    if stores.scheme(url) != "sqlite":
        return url
    if not url.startswith("sqlite:///"):
        raise StoreError(f"unsupported trace store {url!r}: expected sqlite:///PATH")
    return f"sqlite:///{resolve(url.removeprefix('sqlite:///'))}"


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
    """Which rows; a status that means nothing is refused here (ValueError), so a backend never sees one."""

    since: float | None = None
    until: float | None = None
    model: str | None = None
    team: str | None = None
    status: str | None = None  # "200", or a class: "2xx", "4xx", "5xx", or "error" (>= 400)
    prompt: str | None = None  # "id" or "id@version" (a version number or a label)
    cache: str | None = None
    after_seq: int | None = None  # only rows newer than this (tail)
    _status_range: tuple[int, int | None] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.status is not None:
            object.__setattr__(self, "_status_range", _status_range(self.status))

    def where(self, mark: str = "?") -> tuple[str, list[Any]]:
        """The WHERE clause of any SQL backend, with `mark` as its placeholder, and its arguments."""
        clauses: list[str] = []
        args: list[Any] = []
        for condition, value in self._conditions():
            if value is not None:
                clauses.append(condition.replace("?", mark))
                args.append(value)
        version = self.prompt.partition("@")[2] if self.prompt is not None else ""
        if version:
            clauses.append(f"(prompt_version = {mark} OR prompt_label = {mark})")
            args.extend([int(version) if version.isdigit() else -1, version])
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def _conditions(self) -> list[tuple[str, Any]]:
        low, high = self._status_range or (None, None)
        return [
            ("model = ?", self.model),
            ("team = ?", self.team),
            ("cache = ?", self.cache),
            ("started_at >= ?", self.since),
            ("started_at < ?", self.until),
            ("seq > ?", self.after_seq),
            ("status >= ?", low),
            ("status < ?", high),
            ("prompt_id = ?", self.prompt.partition("@")[0] if self.prompt is not None else None),
        ]


def _status_range(status: str) -> tuple[int, int | None]:
    """`404` -> [404, 405); `4xx` -> [400, 500); `error` -> 400 and above."""
    if status.isdigit() and len(status) <= 3:
        return int(status), int(status) + 1
    if status == "error":
        return 400, None
    if len(status) == 3 and status[0] in "12345" and status[1:] == "xx":
        low = int(status[0]) * 100
        return low, low + 100
    raise ValueError(f"status must be a code, 2xx/4xx/5xx or 'error', not {status!r}")


def to_dict(names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A stored row as readers get it: JSON decoded, flags as booleans, `started_at` in ISO 8601."""
    record = dict(zip(names, row, strict=True))
    for column in JSON_COLUMNS:
        if isinstance(record[column], str | bytes):
            record[column] = orjson.loads(record[column])
    for column in BOOL_COLUMNS:
        if record[column] is not None:
            record[column] = bool(record[column])
    record["started_at"] = iso(record["started_at"])
    return record

"""`GET /admin/traces` and `GET /admin/traces/{request_id}`: the trace store, read in a thread.

The list pages by `cursor` (the `next_cursor` of the previous page), newest first, or oldest first
with `order=asc` (how `gateway traces export --url` reads a whole range in time order). A team
admin's calls are confined to its team's rows: the team filter is forced, never trusted from the query.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.errors import BadRequest, NotFound
from gateway.traces import store

MAX_LIMIT = 1000


def filters_from(query: Mapping[str, str]) -> store.Filters:
    try:
        since, until = query.get("since"), query.get("until")
        filters = store.Filters(
            since=store.parse_time(since) if since else None,
            until=store.parse_time(until) if until else None,
            model=query.get("model") or None,
            team=query.get("team") or None,
            status=query.get("status") or None,
            prompt=query.get("prompt") or None,
            cache=query.get("cache") or None,
        )
        filters.where()  # validates status
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_filter") from None
    return filters


def _int(query: Mapping[str, str], name: str, default: int | None) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise BadRequest(f"`{name}` must be a non-negative integer.", param=name, code="invalid_value")
    return int(value)


class TraceAdmin:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path

    def _read(self, action: Any) -> Any:
        try:
            conn = store.connect(self.db_path, readonly=True)
        except store.StoreError:
            return None  # nothing recorded yet
        with contextlib.closing(conn):
            try:
                return action(conn)
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return None
                raise

    async def list(self, query: Mapping[str, str], team: str | None = None) -> dict[str, Any]:
        """A page of rows; a team admin's (`team`) only ever of its own team, whatever it filters by."""
        filters = filters_from(query)
        if team is not None:
            if filters.team not in (None, team):
                return {"object": "list", "data": [], "next_cursor": None}
            filters = dataclasses.replace(filters, team=team)
        limit = min(_int(query, "limit", 50) or 0, MAX_LIMIT)
        cursor = _int(query, "cursor", None)
        order = query.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise BadRequest("`order` must be `desc` (newest first) or `asc` (oldest first).", param="order", code="invalid_value")
        ascending = order == "asc"
        found = await asyncio.to_thread(self._read, lambda conn: store.page(conn, filters, limit, cursor, ascending))
        data, next_cursor = found if found is not None else ([], None)
        return {"object": "list", "data": data, "next_cursor": str(next_cursor) if next_cursor is not None else None}

    async def get(self, request_id: str, query: Mapping[str, str], team: str | None = None) -> dict[str, Any]:
        """The newest row with this id (`?team=` picks a team's); a team admin's only of its own
        team: another team's row answers 404 like no row, so its existence is not revealed."""
        wanted = query.get("team") or None
        if team is not None and wanted not in (None, team):
            found = None
        else:
            found = await asyncio.to_thread(self._read, lambda conn: store.get(conn, request_id, team or wanted))
        if found is None:
            raise NotFound(f"No trace for request `{request_id}` (records are written within about a second).", code="trace_not_found")
        result: dict[str, Any] = found
        return result

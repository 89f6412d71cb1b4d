"""`GET /admin/traces` and `GET /admin/traces/{request_id}`: the trace store (`store.TraceStore`),
read in a thread.

The list pages by `cursor` (the `next_cursor` of the previous page), newest first, or oldest first
with `order=asc` (how `gateway traces export --url` reads a whole range in time order). A team
admin's calls are confined to its team's rows: the team filter is forced, never trusted from the query.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from gateway.errors import BadRequest, NotFound
from gateway.traces import store

MAX_LIMIT = 1000
T = TypeVar("T")


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
    def __init__(self, store_url: str) -> None:
        self.store = store.open_store(store_url)

    async def _read(self, action: Callable[[store.TraceStore], T]) -> T | None:
        """The action's answer, read off the event loop; None while nothing has been recorded."""
        try:
            return await asyncio.to_thread(action, self.store)
        except store.NoStore:
            return None

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
        found = await self._read(lambda traces: traces.page(filters, limit, cursor, ascending))
        data, next_cursor = found if found is not None else ([], None)
        return {"object": "list", "data": data, "next_cursor": str(next_cursor) if next_cursor is not None else None}

    async def get(self, request_id: str, query: Mapping[str, str], team: str | None = None) -> dict[str, Any]:
        """The newest row with this id (`?team=` picks a team's); a team admin's only of its own
        team: another team's row answers 404 like no row, so its existence is not revealed."""
        wanted = query.get("team") or None
        if team is not None and wanted not in (None, team):
            found = None
        else:
            found = await self._read(lambda traces: traces.get(request_id, team or wanted))
        if found is None:
            raise NotFound(f"No trace for request `{request_id}` (records are written within about a second).", code="trace_not_found")
        return found

"""W3C trace context: continue the client's `traceparent`, or start a trace; name each attempt's span.

The request path only parses and formats strings here; spans themselves are built after the
request, from its record, by the trace writer. The CLIENT span of upstream attempt `i` has a span
id derived from the SERVER span's (`child_span_id`), so the `traceparent` sent upstream and the span
exported later agree without the record carrying one id per attempt.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.pipeline.record import Record

_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def new_trace_id() -> str:
    return f"{random.getrandbits(128) or 1:032x}"


def new_span_id() -> str:
    return f"{random.getrandbits(64) or 1:016x}"


def parse(header: str | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) from a valid version-00-compatible traceparent, else None."""
    if not header or len(header) < 55:
        return None
    parts = header.strip().lower().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or (parts[0] == "00" and len(parts) != 4):
        return None
    _, trace_id, span_id, flags = parts[:4]
    if len(trace_id) != 32 or len(span_id) != 16 or len(flags) != 2 or not _HEX.issuperset(trace_id + span_id + flags + parts[0]):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, flags


def child_span_id(span_id: str, attempt: int) -> str:
    """The span id of upstream attempt `attempt` (0-based) under the gateway's span `span_id`."""
    mixed = (int(span_id, 16) * 0x9E3779B97F4A7C15 + attempt + 1) & 0xFFFFFFFFFFFFFFFF
    return f"{mixed or 1:016x}"


def traceparent(trace_id: str, span_id: str, flags: str = "01") -> str:
    return f"00-{trace_id}-{span_id}-{flags}"


def upstream_header(trace_id: str, span_id: str, flags: str, attempts: int) -> str:
    """The traceparent for the upstream request of the current attempt (the last of `attempts`)."""
    return traceparent(trace_id, child_span_id(span_id, max(attempts - 1, 0)), flags)


def start(record: Record, header: str | None) -> None:
    """Continue the client's trace (or start one) on `record`, with a new span id for the gateway."""
    parent = parse(header) if header else None
    if parent is None:
        record.trace_id = new_trace_id()
    else:
        record.trace_id, record.parent_span_id, record.trace_flags = parent
    record.span_id = new_span_id()

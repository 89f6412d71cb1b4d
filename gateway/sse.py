"""Incremental Server-Sent Events parsing and framing.

`SSEDecoder.feed` takes bytes as they arrive from the network, in pieces of any size, and returns
the events completed so far. It keeps only the unfinished tail, so memory per stream is bounded by
the largest single event, not by the response. Lines may end in LF, CRLF or CR (the SSE grammar).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Event:
    data: bytes
    event: str | None = None


class SSEDecoder:
    __slots__ = ("_buffer", "_max", "_skip_lf")

    def __init__(self, max_event_bytes: int = 16 * 1024 * 1024) -> None:
        self._buffer = b""
        self._max = max_event_bytes
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # second half of a CRLF whose CR ended the previous chunk
        self._skip_lf = False
        if b"\r" in chunk:
            # a CR always ends a line; if it is the last byte, an LF that follows is the same line end
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *blocks, self._buffer = (self._buffer + chunk).split(b"\n\n")
        if len(self._buffer) > self._max:
            raise ValueError("SSE event larger than the limit")
        events = []
        for block in blocks:
            event = _parse_block(block)
            if event is not None:
                events.append(event)
        return events

    @property
    def pending(self) -> bool:
        return bool(self._buffer.strip())


def _parse_block(block: bytes) -> Event | None:
    if block.startswith(b"data: ") and b"\n" not in block:  # the common case, one data line
        return Event(block[6:])
    data: list[bytes] = []
    name: str | None = None
    for line in block.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    if not data and name is None:
        return None
    return Event(b"\n".join(data), name)


def frame(data: bytes, event: str | None = None) -> bytes:
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"

"""A worker's side of tracing: finished records go to the trace writer without blocking anything.

`put` appends the finished `Record` itself (no copy, no serialization) to a bounded queue; a timer
on the event loop sends what has accumulated every `flush_s` as one length-prefixed frame of JSON
(orjson serializes the dataclasses directly). If the writer falls behind, its socket's buffer
grows; past `HIGH_WATER` the sink stops sending and the queue fills, and from then on the oldest
records are dropped and counted, never a request delayed. Drops are reported to the writer in the
next frame, so the writer's totals (sent back on the same socket) account for every record.
A record orjson cannot encode (nested past its 255 levels, say) costs only itself: the batch is
then encoded record by record, and that one sent without its bodies (or, failing that, counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from typing import Any

import orjson

from gateway.pipeline.record import Record
from gateway.traces import capture, spans

log = logging.getLogger("gateway.traces")

HIGH_WATER = 16 * 1024 * 1024


def _default(value: Any) -> Any:
    return None  # a field added to Record that JSON cannot carry: not part of the trace


class _Protocol(asyncio.Protocol):
    def __init__(self, sink: TraceSink) -> None:
        self.sink = sink
        self.buffer = b""
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        lines = (self.buffer + data).split(b"\n")
        self.buffer = lines.pop()
        for line in reversed(lines):
            try:
                self.sink.totals = orjson.loads(line)
                break
            except orjson.JSONDecodeError:
                continue

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink.connection_lost()
        if not self.lost.done():
            self.lost.set_result(None)


class TraceSink:
    def __init__(self, address: str, queue_size: int, exporting: bool, flush_s: float = 0.05) -> None:
        self.address = address
        self._max = queue_size
        self._exporting = exporting
        self._flush_s = flush_s
        self._pending: deque[Record] = deque()
        self._dropped = 0  # records dropped here and not yet reported to the writer
        self._dropped_spans = 0
        self.totals: dict[str, Any] = {}  # the writer's latest totals
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._last_warning = 0.0
        self._last_odd = 0.0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_unix_connection(lambda: _Protocol(self), self.address)
        self._transport, self._protocol = transport, protocol

    def connection_lost(self) -> None:
        self._transport = None
        if not self._closing:
            log.error("lost the connection to the trace writer; trace records are kept (bounded) and retried")

    def put(self, record: Record) -> None:
        pending = self._pending
        if len(pending) >= self._max:
            self._drop(pending.popleft())
        pending.append(record)
        if self._timer is None and not self._closing:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._flush)

    def _drop(self, record: Record) -> None:
        self._dropped += 1
        if self._exporting:
            self._dropped_spans += spans.count(len(record.attempts), record.target)
        now = time.monotonic()
        if now - self._last_warning > 10:
            self._last_warning = now
            log.error("trace writer behind or unreachable: dropping the oldest trace records (counted in /metrics)")

    def dropped_here(self) -> tuple[int, int]:
        """Records and spans dropped in this worker that the writer's totals do not include yet."""
        return self._dropped, self._dropped_spans

    def _flush(self, force: bool = False) -> None:
        self._timer = None
        transport = self._transport
        if not self._pending and not self._dropped:
            return
        if transport is None or transport.is_closing():
            if not self._closing:
                self._timer = asyncio.get_running_loop().call_later(1.0, self._retry)
            return
        if not force and transport.get_write_buffer_size() > HIGH_WATER:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self._flush)
            return
        batch, self._pending = self._pending, deque()
        for record in batch:  # the body goes whole only where the writer needs it: "metadata", or "full" without its text
            if record.request_body is not None and (record.capture == "none" or record.request_json is not None):
                record.request_body = capture.params(record.request_body)
        message: dict[str, Any] = {"records": list(batch), "dropped": self._dropped, "dropped_spans": self._dropped_spans}
        try:
            payload = orjson.dumps(message, default=_default)
        except orjson.JSONEncodeError:  # some record cannot be encoded: it alone goes without its bodies
            message.update(self._one_by_one(batch))
            payload = orjson.dumps(message, default=_default)
        transport.write(len(payload).to_bytes(4, "little") + payload)
        self._dropped = self._dropped_spans = 0

    def _one_by_one(self, batch: deque[Record]) -> dict[str, Any]:
        """The batch's records encoded one at a time: one that fails is sent without its bodies
        (`degraded`), or not at all (`unencodable`) when even that fails; the writer counts both."""
        encoded: list[orjson.Fragment] = []
        degraded = unencodable = unencodable_spans = 0
        for record in batch:
            try:
                encoded.append(orjson.Fragment(orjson.dumps(record, default=_default)))
                continue
            except orjson.JSONEncodeError as exc:
                self._warn_odd(record, exc)
            try:
                bare = dataclasses.replace(record, request_body=None, request_json=None, response_json=None, response_text=None)
                encoded.append(orjson.Fragment(orjson.dumps(bare, default=_default)))
                degraded += 1
            except orjson.JSONEncodeError:
                unencodable += 1
                unencodable_spans += spans.count(len(record.attempts), record.target) if self._exporting else 0
        return {"records": encoded, "degraded": degraded, "unencodable": unencodable, "unencodable_spans": unencodable_spans}

    def _warn_odd(self, record: Record, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_odd > 10:
            self._last_odd = now
            log.error("trace record %s cannot be encoded (%s): sent without its bodies (counted in /metrics)", record.request_id, exc)

    def _retry(self) -> None:
        self._timer = None

        async def reconnect() -> None:
            with contextlib.suppress(OSError):
                await self.open()
            self._flush()

        asyncio.get_running_loop().create_task(reconnect())

    async def close(self, wait_s: float = 30.0) -> None:
        """Send everything still queued and close the connection once it is written."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flush(force=True)
        if self._pending:
            log.error("trace writer unreachable at shutdown: %d trace records lost", len(self._pending))
        if self._transport is not None and self._protocol is not None:
            self._transport.close()
            try:
                await asyncio.wait_for(asyncio.shield(self._protocol.lost), wait_s)
            except TimeoutError:
                log.error("trace writer did not take the last records within %.0f s", wait_s)

"""The trace writer: one process, fed by every worker, that owns the store and the OTLP export.

Workers hand finished records over a Unix socket in length-prefixed batches (`sink.py`); nothing
on a worker's request path waits for this process. Here a selector loop reads the batches into two
bounded queues, one per sink: a store thread inserts into the trace store (`store.TraceStore`, the
backend its URL names; for SQLite, the only writer of the file) and an export thread turns records
into spans and posts them over OTLP/HTTP. A full queue drops its oldest records; every record and
span ends up counted as written/exported or dropped (by reason), and those totals go back to every
worker a few times a second for `/metrics`. No record, however odd, costs more than itself: one
whose content cannot be captured is stored (and exported) without it, a row the store refuses (it
refuses that row alone) is tried again without its content, one of which nothing can be made is
dropped and counted, and neither thread ever ends on an error.

Shutdown is driven by the owner (the single worker, or the supervisor): it closes the writer's stdin
after its workers have flushed and closed their connections. The writer then reads what is left,
drains both queues (the export within a deadline), and exits. SIGTERM and SIGINT are ignored here,
so a signal sent to the whole process group cannot cut a flush short.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from gateway.traces import rows, spans, store
from gateway.traces.otlp import Exporter, export_encoded

if TYPE_CHECKING:  # the writer process never imports the config models (pydantic: ~15 MB)
    from gateway.config import Config

log = logging.getLogger("gateway.traces")

HEADER = 4  # bytes of little-endian frame length
STORE_BATCH = 500
EXPORT_BATCH = 256


@dataclass(frozen=True, slots=True)
class Settings:
    store_url: str  # its file's path made absolute
    otlp_endpoint: str
    service_name: str
    queue_size: int
    retention_days: float
    max_rows: int
    max_captured_bytes: int
    providers: dict[str, tuple[str, str]]  # name -> (kind, host:port)
    drain_timeout_s: float = 60.0
    export_timeout_s: float = 10.0

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> Settings:
        data = orjson.loads(raw)
        providers = {name: (kind, address) for name, (kind, address) in data.pop("providers").items()}
        return cls(**{**data, "providers": providers})


def settings_from(config: Config) -> Settings:
    f = config.file
    providers: dict[str, tuple[str, str]] = {}
    for name, p in f.providers.items():
        kind = "azure" if p.azure else p.kind
        netloc = urlsplit(p.base_url).netloc if p.base_url else ""
        if netloc and ":" not in netloc:
            netloc += ":443" if p.base_url and p.base_url.startswith("https") else ":80"
        providers[name] = (kind, netloc)
    return Settings(
        store_url=store.located(f.state.traces, config.path),
        otlp_endpoint=f.telemetry.otlp_endpoint,
        service_name=f.telemetry.service_name,
        queue_size=f.state.trace_queue_size,
        retention_days=f.state.trace_retention_days,
        max_rows=f.state.trace_max_rows,
        max_captured_bytes=f.telemetry.max_captured_bytes,
        providers=providers,
        drain_timeout_s=f.server.drain_timeout_s + 30,
    )


class BoundedQueue:
    """A deque that drops its oldest items when full, counting them; consumers take batches."""

    def __init__(self, size: int, on_drop: Callable[[list[dict[str, Any]]], None]) -> None:
        self._items: deque[dict[str, Any]] = deque()
        self._size = size
        self._on_drop = on_drop
        self._ready = threading.Condition()
        self._closed = False

    def put_many(self, items: list[dict[str, Any]]) -> None:
        with self._ready:
            self._items.extend(items)
            over = len(self._items) - self._size
            if over > 0:
                self._on_drop([self._items.popleft() for _ in range(over)])
            self._ready.notify()

    def take(self, limit: int, timeout: float) -> list[dict[str, Any]] | None:
        """Up to `limit` items; [] after `timeout` with none; None once closed and empty."""
        with self._ready:
            if not self._items and not self._closed:
                self._ready.wait(timeout)
            if not self._items:
                return None if self._closed else []
            return [self._items.popleft() for _ in range(min(limit, len(self._items)))]

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def clear(self) -> list[dict[str, Any]]:
        with self._ready:
            items = list(self._items)
            self._items.clear()
            return items


# Why a record or span went unstored, and why a record was stored without its content: closed sets,
# the `reason` labels of /metrics. `invalid_record`: a record no row (or span) could be made of even
# without its content, or that its worker could not encode at all; `capture_failed`: its content
# could not be captured (stored without it); `unencodable`: its worker could not encode it whole
# and sent it without its bodies.
DROP_REASONS = ("queue_full", "store_error", "invalid_record")
SPAN_DROP_REASONS = ("queue_full", "export_failed", "invalid_record")
DEGRADE_REASONS = ("capture_failed", "unencodable")


def _zero(reasons: tuple[str, ...]) -> dict[str, int]:
    return dict.fromkeys(reasons, 0)


@dataclass
class Totals:
    received: int = 0
    written: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: _zero(DROP_REASONS))
    degraded: dict[str, int] = field(default_factory=lambda: _zero(DEGRADE_REASONS))
    spans_exported: int = 0
    spans_dropped: dict[str, int] = field(default_factory=lambda: _zero(SPAN_DROP_REASONS))

    def message(self) -> bytes:
        return orjson.dumps(self.__dict__) + b"\n"


def _span_count(entries: list[dict[str, Any]]) -> int:
    return sum(_spans_of(e) for e in entries)


def _spans_of(entry: Any) -> int:
    try:
        return spans.count(len(entry.get("attempts") or ()), entry.get("target"))
    except Exception:  # a record too odd to say: it would have made one span
        return 1


class Writer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.totals = Totals()
        self.records = BoundedQueue(settings.queue_size, self._records_dropped)
        self.exporting = bool(settings.otlp_endpoint)
        self.to_export = BoundedQueue(settings.queue_size, self._spans_dropped)
        self._store: store.TraceStore | None = None
        self._last_error_log = 0.0
        self._since_prune = 0
        self._pruned_at = 0.0

    # accounting ----------------------------------------------------------------------------
    def _records_dropped(self, entries: list[dict[str, Any]], reason: str = "queue_full") -> None:
        self.totals.dropped[reason] += len(entries)
        if reason == "queue_full":
            self._warn(f"trace store behind: dropped the {len(entries)} oldest trace records")

    def _spans_dropped(self, entries: list[dict[str, Any]], reason: str = "queue_full") -> None:
        self.totals.spans_dropped[reason] += _span_count(entries)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 10:
            self._last_error_log = now
            log.error("%s (further drops are counted in gateway_trace_records_dropped_total)", message)

    def _odd(self, what: str, entry: Any, exc: BaseException) -> None:
        """Say once in a while that a record was odd: its id and the error, never its content."""
        request_id = entry.get("request_id") if isinstance(entry, dict) else None
        self._warn(f"trace record {request_id!r}: {what} ({type(exc).__name__}: {exc})")

    # the store -----------------------------------------------------------------------------
    def _open(self) -> store.TraceStore:
        if self._store is None:
            traces = store.open_store(self.settings.store_url)
            try:
                traces.migrate()
            except BaseException:
                traces.close()
                raise
            self._store = traces
        return self._store

    def _row(self, entry: Any) -> store.Row | None:
        """The record's row; without its content when that cannot be captured; None (counted) when
        not even that can be made of it."""
        limit = self.settings.max_captured_bytes
        try:
            return rows.row(entry, limit)
        except Exception as exc:  # any odd value in any field: the row is kept without what failed
            self._odd("content not captured", entry, exc)
        try:
            row = rows.row(rows.without_content(entry), limit)
        except Exception as exc:
            self._odd("not stored", entry, exc)
            self.totals.dropped["invalid_record"] += 1
            return None
        self.totals.degraded["capture_failed"] += 1
        return row

    def _write(self, batch: list[dict[str, Any]]) -> None:
        built = [(e, row) for e in batch if (row := self._row(e)) is not None]
        inserted = self._insert([row for _, row in built])
        if inserted is not None and inserted.refused:
            self._without_content([(built[i][0], exc) for i, exc in inserted.refused])
        if self._store is not None and (
            self._since_prune >= max(1, min(1000, self.settings.max_rows // 10)) or time.monotonic() - self._pruned_at > 60
        ):
            self._prune(self._store)

    def _insert(self, batch: list[store.Row]) -> store.Inserted | None:
        """Insert into the store, opening it if need be; None when the store failed, its rows
        dropped (counted) but those stored before the failure."""
        try:
            inserted = self._open().insert_batch(batch) if batch else store.Inserted()
        except store.StoreError as exc:
            self._stored(exc.done.stored)
            self.totals.dropped["store_error"] += len(batch) - exc.done.stored
            self._warn(f"trace store failed: {exc}")
            if self._store is not None:
                self._store.close()
                self._store = None
            return None
        self._stored(inserted.stored)
        return inserted

    def _stored(self, count: int) -> None:
        self.totals.written += count
        self._since_prune += count

    def _without_content(self, refused: list[tuple[Any, Exception]]) -> None:
        """Rows the store refused go again without their content; one it refuses still is dropped (counted)."""
        degraded: list[store.Row] = []
        for entry, exc in refused:
            self._odd("refused by the store", entry, exc)
            try:
                degraded.append(rows.row(rows.without_content(entry), self.settings.max_captured_bytes))
            except Exception:  # built whole before: a row without content can only fail the same way
                self.totals.dropped["invalid_record"] += 1
        inserted = self._insert(degraded)
        if inserted is not None:
            self.totals.degraded["capture_failed"] += inserted.stored
            self.totals.dropped["invalid_record"] += len(inserted.refused)

    def _prune(self, traces: store.TraceStore) -> None:
        self._since_prune, self._pruned_at = 0, time.monotonic()
        with contextlib.suppress(store.StoreError):
            traces.prune(self.settings.retention_days, self.settings.max_rows)

    def store_loop(self) -> None:
        with contextlib.suppress(store.StoreError):
            self._prune(self._open())  # migrate and apply retention on start
        while (batch := self.records.take(STORE_BATCH, 1.0)) is not None:
            if batch:
                try:
                    self._write(batch)
                except Exception as exc:  # a bug here must cost this batch (counted), never the thread
                    self._records_dropped(batch, "store_error")
                    self._warn(f"trace store: a batch failed unexpectedly ({type(exc).__name__}: {exc})")
        if self._store is not None:
            self._store.close()

    # the OTLP export -----------------------------------------------------------------------
    def export_loop(self, stop_by: list[float]) -> None:
        s = self.settings
        exporter = Exporter(s.otlp_endpoint, timeout_s=s.export_timeout_s)
        resource = {"service.name": s.service_name, "service.instance.id": f"{socket.gethostname()}:{os.getppid()}"}
        while (batch := self.to_export.take(EXPORT_BATCH, 1.0)) is not None:
            if not batch:
                continue
            try:
                encoded = [span for e in batch for span in self._spans(e)]
                body = export_encoded(resource, "llm-gateway", "0.1.0", encoded)
                deadline = stop_by[0] if stop_by else time.monotonic() + 30
                exported = exporter.export(body, deadline)
            except Exception as exc:  # a bug here must cost this batch (counted), never the thread
                self._spans_dropped(batch, "export_failed")
                self._warn(f"trace export: a batch failed unexpectedly ({type(exc).__name__}: {exc})")
                continue
            if exported:
                self.totals.spans_exported += len(encoded)
            else:
                self.totals.spans_dropped["export_failed"] += len(encoded)
            if stop_by and time.monotonic() > stop_by[0]:
                self._spans_dropped(self.to_export.clear(), "export_failed")
        exporter.close()

    def _spans(self, entry: Any) -> list[bytes]:
        """The record's spans, encoded; without content when that fails; none (counted) when even that does."""
        try:
            return self._encoded(entry)
        except Exception as exc:  # any odd value in any field: the spans go without what failed
            self._odd("span content not exported", entry, exc)
        try:
            return self._encoded(rows.without_content(entry))
        except Exception as exc:
            self._odd("spans not exported", entry, exc)
        self.totals.spans_dropped["invalid_record"] += _spans_of(entry)
        return []

    def _encoded(self, entry: Any) -> list[bytes]:
        s = self.settings
        return [span.encode() for span in spans.build(entry, s.providers, s.max_captured_bytes)]

    # intake --------------------------------------------------------------------------------
    def _frame(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        entries: list[dict[str, Any]] = message["records"]
        t = self.totals
        t.dropped["queue_full"] += message.get("dropped", 0)
        t.spans_dropped["queue_full"] += message.get("dropped_spans", 0)
        t.dropped["invalid_record"] += message.get("unencodable", 0)  # the worker could not send these at all
        t.spans_dropped["invalid_record"] += message.get("unencodable_spans", 0)
        t.degraded["unencodable"] += message.get("degraded", 0)
        self.totals.received += len(entries)
        self.records.put_many(entries)
        if self.exporting:
            self.to_export.put_many(entries)

    def serve(self, listener: socket.socket, control: IO[bytes]) -> None:
        store_thread = threading.Thread(target=self.store_loop, name="trace-store")
        stop_by: list[float] = []
        export_thread = threading.Thread(target=self.export_loop, args=(stop_by,), name="trace-export")
        store_thread.start()
        if self.exporting:
            export_thread.start()
        self._intake(listener, control)
        stop_by.append(time.monotonic() + self.settings.export_timeout_s)
        self.records.close()
        self.to_export.close()
        store_thread.join()
        if self.exporting:
            export_thread.join()
        t = self.totals
        log.info(
            "trace writer done: %d records received, %d written, dropped %s; spans exported %d, dropped %s",
            t.received,
            t.written,
            t.dropped,
            t.spans_exported,
            t.spans_dropped,
        )

    def _intake(self, listener: socket.socket, control: IO[bytes]) -> None:
        selector = selectors.DefaultSelector()
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, "accept")
        selector.register(control.fileno(), selectors.EVENT_READ, "control")
        buffers: dict[socket.socket, bytearray] = {}
        stopping_at: float | None = None
        last_sent, sent_at = b"", 0.0
        while stopping_at is None or (buffers and time.monotonic() - stopping_at < self.settings.drain_timeout_s):
            for key, _ in selector.select(0.2):
                if key.data == "accept":
                    client, _ = listener.accept()
                    client.setblocking(False)
                    buffers[client] = bytearray()
                    selector.register(client, selectors.EVENT_READ, "client")
                elif key.data == "control":
                    with contextlib.suppress(OSError):
                        if os.read(control.fileno(), 4096):
                            continue
                    stopping_at = time.monotonic()  # the owner closed our stdin: no more workers will come
                    selector.unregister(control.fileno())
                    selector.unregister(listener)
                    listener.close()
                else:
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    if not self._read(sock, buffers[sock]):
                        selector.unregister(sock)
                        sock.close()
                        del buffers[sock]
            if time.monotonic() - sent_at < 0.2:
                continue
            message, sent_at = self.totals.message(), time.monotonic()
            if message != last_sent:
                last_sent = message
                for sock in buffers:
                    with contextlib.suppress(OSError):
                        sock.send(message)
        if buffers:
            log.error("trace writer: %d worker connections still open after the drain timeout", len(buffers))

    def _read(self, sock: socket.socket, buffer: bytearray) -> bool:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        buffer += data
        while len(buffer) >= HEADER:
            size = int.from_bytes(buffer[:HEADER], "little")
            if len(buffer) < HEADER + size:
                break
            payload = bytes(buffer[HEADER : HEADER + size])
            del buffer[: HEADER + size]
            try:
                self._frame(payload)
            except Exception as exc:  # a frame it cannot read costs that frame, never the writer
                self._warn(f"trace writer: unreadable batch from a worker ({type(exc).__name__}: {exc})")
        return bool(data)


def tune_gc() -> None:
    """What is loaded so far lives as long as the process: out of the collector's generations it goes.
    Records are plain JSON values, rows tuples, spans bytes: reference counting frees them all, so the
    young generation is collected far less often than every 700 allocations (a decoded record alone
    is ~20 containers); at the default, collections took ~3 us a record in each stage."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def main() -> None:
    """`python -m gateway.traces.writer FD`: FD is the listening socket; stdin carries the settings
    (one JSON line) and then stays open until the owner is done."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    listener = socket.socket(fileno=int(sys.argv[1]))
    address = Path(listener.getsockname())
    settings = Settings.from_json(sys.stdin.buffer.readline())
    tune_gc()
    Writer(settings).serve(listener, sys.stdin.buffer)
    # the owner is done with the socket, or gone (its end of our stdin closed when it died); a writer
    # that crashes leaves the socket to its owner, which starts another writer on it
    shutil.rmtree(address.parent, ignore_errors=True)


class WriterProcess:
    """Started by whoever owns the workers; `address` is the socket the workers connect to.

    The owner keeps the listening socket, so a writer that dies (a crash, the OOM killer) is
    replaced after `RESTART_S` on the same socket: the workers' sinks reconnect by themselves and
    send what they queued meanwhile. What the dead writer held in memory is lost, and its totals
    start again from zero (a counter reset to Prometheus); the log says so.
    """

    RESTART_S = 1.0

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dir = tempfile.mkdtemp(prefix="gateway-traces-")
        self.address = str(Path(self._dir) / "writer.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.address)
        self._listener.listen(256)
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._process = self._spawn()
        threading.Thread(target=self._watch, name="trace-writer-watch", daemon=True).start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        fd = self._listener.fileno()
        process = subprocess.Popen([sys.executable, "-m", "gateway.traces.writer", str(fd)], stdin=subprocess.PIPE, pass_fds=(fd,))
        assert process.stdin is not None
        with contextlib.suppress(OSError):  # died at once: the watcher sees it
            process.stdin.write(self._settings.to_json() + b"\n")
            process.stdin.flush()
        return process

    def _watch(self) -> None:
        while True:
            code = self._process.wait()
            if self._stopped.is_set():
                return
            log.error("trace writer exited with %s; starting another in %.0f s (the records it held are lost)", code, self.RESTART_S)
            if self._stopped.wait(self.RESTART_S):
                return
            with self._lock:
                if self._stopped.is_set():
                    return
                self._process = self._spawn()

    def stop(self, timeout: float | None = None) -> int | None:
        """Tell the writer that no more workers will come, wait for it to flush, and clean up."""
        with self._lock:
            self._stopped.set()
            process = self._process
        assert process.stdin is not None
        with contextlib.suppress(OSError):
            process.stdin.close()  # EOF: the signal to finish
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("trace writer did not finish in time; killing it")
            process.kill()
            process.wait()
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        return process.returncode


if __name__ == "__main__":
    main()

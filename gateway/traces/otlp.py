"""OTLP/HTTP export: spans encoded straight to protobuf bytes, and posted with retries.

The OpenTelemetry SDK was measured here at ~230 us per request to build two spans and encode them
(`ReadableSpan` + the OTLP exporter's encoder): more than the gateway's whole per-request budget.
An OTLP export request is a small, stable protobuf message, so this module writes its bytes directly
(~15 us per request) from plain `Span` values. Field numbers are those of
`opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`; the tests decode the output
with the official `opentelemetry-proto` classes, and the integration test reads it back from Phoenix.
"""

from __future__ import annotations

import http.client
import logging
import struct
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("gateway.traces")

SERVER, CLIENT = 2, 3  # Span.SpanKind
STATUS_UNSET, STATUS_ERROR = 0, 2

Value = str | bool | int | float | Sequence[str]

_LEN = [bytes([n]) for n in range(128)]


def _varint(n: int) -> bytes:
    if n < 128:
        return _LEN[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, embedded messages)."""
    return tag + _varint(len(payload)) + payload


_KEYS: dict[str, bytes] = {}


def _key(name: str) -> bytes:
    encoded = _KEYS.get(name)
    if encoded is None:
        encoded = _KEYS[name] = _field(b"\x0a", name.encode())  # KeyValue.key = 1
    return encoded


def _any(value: Value) -> bytes:
    """An AnyValue message."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())  # string_value = 1
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"  # bool_value = 2
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int_value = 3 (two's complement)
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)  # double_value = 4
    values = b"".join(_field(b"\x0a", _any(v)) for v in value)  # ArrayValue.values = 1
    return _field(b"\x2a", values)  # array_value = 5


def _encode(tag: bytes, key: str, value: Value) -> bytes:
    return _field(tag, _key(key) + _field(b"\x12", _any(value)))


# Most attribute values repeat (models, teams, providers, token counts): each (tag, key) keeps its
# encoded attributes by value, at most _CACHED of them. The value's type is checked on a hit, as
# True == 1 == 1.0 share a slot. Looking up a dict per key, not one keyed by tuples, saves the
# tuple's allocation and hashing: half the cost of encoding a span's attributes.
_CACHES: dict[tuple[bytes, str], dict[object, tuple[bytes, type]]] = {}
_CACHED = 2000


def attributes(tag: bytes, attrs: Mapping[str, Value | None]) -> bytes:
    """Repeated KeyValue fields under `tag`; None values are left out."""
    out = []
    for key, value in attrs.items():
        if value is None:
            continue
        kind = type(value)
        if kind is list or kind is tuple:
            out.append(_encode(tag, key, value))
            continue
        cache = _CACHES.get((tag, key))
        if cache is None:
            cache = _CACHES[(tag, key)] = {}
        hit = cache.get(value)
        if hit is None or hit[1] is not kind:
            if len(cache) >= _CACHED:  # mostly unique values (ids): caching them buys nothing
                cache.clear()
            hit = cache[value] = (_encode(tag, key, value), kind)
        out.append(hit[0])
    return b"".join(out)


@dataclass(slots=True)
class Span:
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Value | None] = field(default_factory=dict)
    error: str | None = None  # sets status ERROR with this message

    def encode(self) -> bytes:
        parts = [
            _field(b"\x0a", bytes.fromhex(self.trace_id)),
            _field(b"\x12", bytes.fromhex(self.span_id)),
            _field(b"\x22", bytes.fromhex(self.parent_span_id)) if self.parent_span_id else b"",
            _field(b"\x2a", self.name.encode()),
            b"\x30" + _varint(self.kind),
            b"\x39" + struct.pack("<Q", self.start_ns),
            b"\x41" + struct.pack("<Q", self.end_ns),
            attributes(b"\x4a", self.attributes),
        ]
        if self.error is not None:
            parts.append(_field(b"\x7a", _field(b"\x12", self.error.encode()) + b"\x18" + _varint(STATUS_ERROR)))  # status = 15
        return b"".join(parts)


def export_request(resource: Mapping[str, Value], scope: str, version: str, spans: Sequence[Span]) -> bytes:
    """An ExportTraceServiceRequest with one resource and one instrumentation scope."""
    return export_encoded(resource, scope, version, [span.encode() for span in spans])


def export_encoded(resource: Mapping[str, Value], scope: str, version: str, spans: Sequence[bytes]) -> bytes:
    """`export_request` of spans already encoded (the writer encodes each record's on its own, so
    one that cannot be encoded costs only its own spans)."""
    scope_msg = _field(b"\x0a", _field(b"\x0a", scope.encode()) + _field(b"\x12", version.encode()))
    scope_spans = scope_msg + b"".join(_field(b"\x12", span) for span in spans)
    resource_spans = _field(b"\x0a", attributes(b"\x0a", resource)) + _field(b"\x12", scope_spans)
    return _field(b"\x0a", resource_spans)


@dataclass
class Exporter:
    """POSTs encoded batches to `{endpoint}/v1/traces`; retries what OTLP says is retryable."""

    endpoint: str
    timeout_s: float = 10.0
    attempts: int = 4
    _conn: http.client.HTTPConnection | None = None

    def __post_init__(self) -> None:
        url = urllib.parse.urlsplit(self.endpoint.rstrip("/"))
        self._https = url.scheme == "https"
        self._host = url.netloc
        self._path = (url.path if url.path.endswith("/v1/traces") else url.path + "/v1/traces") or "/v1/traces"

    def _post(self, body: bytes) -> int:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, timeout=self.timeout_s)
        try:
            self._conn.request("POST", self._path, body, {"content-type": "application/x-protobuf"})
            response = self._conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            self.close()
            return 0

    def export(self, body: bytes, deadline: float) -> bool:
        """True once the backend accepted the batch; False when it refused it or time ran out."""
        for attempt in range(self.attempts):
            status = self._post(body)
            if 200 <= status < 300:
                return True
            if status not in (0, 429, 502, 503, 504):
                log.error("OTLP endpoint %s refused a batch of spans (HTTP %d)", self.endpoint, status)
                return False
            delay = min(2.0, 0.1 * 2**attempt)
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
        log.warning("OTLP endpoint %s unavailable; a batch of spans was dropped", self.endpoint)
        return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

"""Slow clients do not hold capacity (issue #13 item 7): a body that does not arrive within
`server.body_timeout_s` of its headers is answered 408 and its connection closed; a stream client
that stops reading is cut off after `server.stream_stall_timeout_s`, its upstream connection closed
and its trace saying `client_stalled`. Raw sockets against a real gateway process.
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import pytest

from tests.conftest import KEYS, GatewayFactory, GatewayProcess, config_for
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.traceutil import metrics, trace, value, wait_for

SERVER = "body_timeout_s = 1\nstream_stall_timeout_s = 1"


def request_head(rid: str, length: int) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEYS['alpha']}\r\nx-request-id: {rid}\r\nContent-Length: {length}\r\n\r\n".encode()
    )


def in_flight(gw: GatewayProcess) -> float:
    return value(metrics(gw), "gateway_in_flight_requests")


@pytest.fixture
def gw(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> GatewayProcess:
    return gateway_factory(config_for(fake.base_url, server=SERVER))


def test_a_body_that_stops_halfway_gets_a_408_and_frees_its_slot(gw: GatewayProcess) -> None:
    rid = uuid.uuid4().hex
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
    sock.sendall(request_head(rid, len(body)) + body[: len(body) // 2])
    started = time.monotonic()
    wait_for(lambda: in_flight(gw) == 1, what="the request to hold a slot")
    answer = b""
    while chunk := sock.recv(65536):  # the gateway answers, then closes the connection
        answer += chunk
    waited = time.monotonic() - started
    sock.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    error = json.loads(payload)["error"]
    assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error" and "body_timeout_s" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert 0.9 < waited < 5  # 1 s, swept once a second
    assert in_flight(gw) == 0
    row = trace(gw, rid)
    assert (row["status"], row["error_type"]) == (408, "request_timeout")


def test_a_whole_body_in_time_is_not_affected(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    """A body sent in two parts within the timeout is served as usual, and the connection kept."""
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
    for _ in range(2):
        sock.sendall(request_head(uuid.uuid4().hex, len(body)) + body[:10])
        time.sleep(0.5)
        sock.sendall(body[10:])
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer
    time.sleep(2.5)  # past the body timeout, idle between requests: nothing happens to the connection
    sock.sendall(request_head(uuid.uuid4().hex, len(body)) + body)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()


def test_a_stream_client_that_stops_reading_is_cut_off_and_its_upstream_closed(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    rid, sock = _big_stream_on_a_small_buffer(gw, fake)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # then it reads nothing more
    stopped = time.monotonic()
    gone = fake.wait_for_disconnect(15)
    assert gone is not None and gone - stopped < 8, "the upstream connection was not closed"
    row = trace(gw, rid)
    assert (row["status"], row["error_type"]) == (499, "client_stalled")
    assert row["output_tokens"] > 0  # charged what was relayed (issue #13 item 2)
    assert in_flight(gw) == 0
    sock.close()


def test_a_client_that_leaves_mid_body_is_traced_as_gone(gw: GatewayProcess) -> None:
    """Not a 200 and not an internal error: 499 client_disconnected, its slot freed."""
    rid = uuid.uuid4().hex
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
    sock.sendall(request_head(rid, 100) + b'{"model": "gpt-4o-mini", ')
    wait_for(lambda: in_flight(gw) == 1, what="the request to hold a slot")
    sock.close()
    row = trace(gw, rid)
    assert (row["status"], row["error_type"]) == (499, "client_disconnected")
    assert in_flight(gw) == 0
    assert "unhandled error" not in gw.log()


def test_a_slow_reader_is_not_a_stalled_one(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    """A client taking ~24 KB/s keeps the gateway's buffer full for longer than the 1 s stall timeout
    at a time, but it keeps taking data: it is served, not cut off."""
    rid, sock = _big_stream_on_a_small_buffer(gw, fake)
    received = 0
    until = time.monotonic() + 5
    while time.monotonic() < until:
        chunk = sock.recv(2048)
        assert chunk, "the gateway cut off a client that was reading"
        received += len(chunk)
        time.sleep(0.08)
    assert fake.disconnects == []
    sock.close()
    row = trace(gw, rid)
    assert (row["status"], row["error_type"]) == (499, "client_disconnected")
    assert received > 50_000


def _big_stream_on_a_small_buffer(gw: GatewayProcess, fake: FakeOpenAI) -> tuple[str, socket.socket]:
    """A streamed request for 8 MB in 400 chunks (far more than the socket buffers on the way and the
    transport's 64 KiB), sent on a socket with a 4 KB receive buffer; the caller decides how to read."""
    fake.script(Behavior(chunks=400, chunk_delay_s=0.002, text="hello " * (8 * 1024 * 1024 // 6)))
    rid = uuid.uuid4().hex
    body = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(15)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(request_head(rid, len(body)) + body)
    return rid, sock

"""The server itself: slow-header clients are cut off, SIGTERM drains, several workers share a port."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import threading
import time

import httpx
import openai
import pytest

from gateway.server import COALESCE_MAX, CoalescingTransport
from tests.conftest import KEYS, GatewayFactory
from tests.traceutil import wait_for

MOCK_ONLY = """
[server]
host = "127.0.0.1"
{server}
[state]
traces = "sqlite:///traces.db"
[providers.demo]
kind = "mock"
chunks = 10
chunk_delay_ms = {delay}
[models."demo-echo"]
targets = [{{ provider = "demo", model = "echo" }}]
[policies]
dir = "policies"
"""


def client(url: str, key: str = KEYS["alpha"]) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=30)


def test_client_that_trickles_its_headers_is_disconnected_after_10s(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(MOCK_ONLY.format(server="", delay=0))
    socks = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    idle = socket.create_connection(("127.0.0.1", gw.port))  # connects and says nothing at all
    socks.append(idle)
    started = time.monotonic()
    closed_at: dict[int, float] = {}
    while len(closed_at) < len(socks) and time.monotonic() - started < 20:
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                if i != len(socks) - 1:
                    s.sendall(b"X")  # one byte of a header line per round, never finishing it
                s.settimeout(0.01)
                if s.recv(1) == b"":
                    closed_at[i] = time.monotonic() - started
            except TimeoutError:
                pass
            except OSError:
                closed_at[i] = time.monotonic() - started
        # well-behaved clients are served meanwhile
        assert client(gw.base_url).chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "hi"}]).choices
        time.sleep(0.5)
    for s in socks:
        s.close()
    assert len(closed_at) == len(socks), closed_at
    assert min(closed_at.values()) >= 9 and max(closed_at.values()) <= 12.5, closed_at


def test_sigterm_lets_streams_finish_then_exits_0(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(MOCK_ONLY.format(server="drain_timeout_s = 20", delay=150))
    pieces: list[str] = []
    first = threading.Event()
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            stream = client(gw.base_url).chat.completions.create(
                model="demo-echo", messages=[{"role": "user", "content": "drain me please, all of me"}], stream=True
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    first.set()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    assert first.wait(10)
    gw.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.ConnectError):  # no longer accepting
        httpx.get(gw.url + "/healthz", timeout=1)
    thread.join(20)
    assert not errors, errors
    assert "".join(pieces) == "drain me please, all of me"
    assert gw.process.wait(20) == 0


def test_workers_share_the_port_and_metrics(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(MOCK_ONLY.format(server="", delay=0), args=("--workers", "2"))
    c = client(gw.base_url)
    for _ in range(40):
        with httpx.Client() as fresh:  # new connections, so the kernel spreads them over both workers
            r = fresh.post(
                gw.base_url + "/chat/completions",
                json={"model": "demo-echo", "messages": [{"role": "user", "content": "x"}]},
                headers={"authorization": f"Bearer {KEYS['alpha']}"},
            )
            assert r.status_code == 200
    assert c.models.list().data[0].id == "demo-echo"

    def total() -> float:  # each worker adds its requests to the shared files within metrics.FLUSH_S
        text = httpx.get(gw.url + "/metrics").text
        return sum(float(v) for v in re.findall(r'^gateway_requests_total\{model="demo-echo",status="200"\} (\S+)$', text, re.M))

    wait_for(lambda: total() == 40, timeout=5, what="40 requests counted")
    time.sleep(0.2)
    assert total() == 40
    assert gw.stop() == 0


class _Recording(asyncio.Transport):
    """A transport that keeps what reaches it (the socket side of a `CoalescingTransport`)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 4242) if name == "peername" else default


async def test_writes_in_one_loop_iteration_leave_as_one() -> None:
    loop = asyncio.get_running_loop()
    sock = _Recording()
    corked = CoalescingTransport(sock, loop)
    corked.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    corked.write(b"body")
    assert sock.writes == []
    await asyncio.sleep(0)
    assert sock.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"]
    big = b"x" * (COALESCE_MAX + 1)
    corked.write(b"head")
    corked.write(big)  # what is held goes first, then the large write as it is
    assert sock.writes[1:] == [b"head", big]
    await asyncio.sleep(0)
    assert len(sock.writes) == 3
    corked.write(b"last words")
    corked.close()  # held bytes are sent before the close
    assert sock.writes[-1] == b"last words" and sock.closed
    await asyncio.sleep(0)
    assert len(sock.writes) == 4  # and not again by the pending flush
    assert corked.get_extra_info("peername") == ("127.0.0.1", 4242)
    dropped = _Recording()
    aborted = CoalescingTransport(dropped, loop)
    aborted.write(b"never sent")
    aborted.abort()
    await asyncio.sleep(0)
    assert dropped.writes == [] and dropped.aborted


def test_pipelined_requests_and_connection_close_get_whole_responses(gateway_factory: GatewayFactory) -> None:
    """On a real socket: two pipelined requests, the second asking to close: both answers arrive
    whole and in order, and the connection closes only after the last byte."""
    gw = gateway_factory(MOCK_ONLY.format(server="", delay=0))
    body = b'{"model":"demo-echo","messages":[{"role":"user","content":"pipelined"}]}'

    def request(extra: bytes = b"") -> bytes:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEYS['alpha']}\r\n"
        return head.encode() + b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body) + extra + b"\r\n" + body

    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as conn:
        conn.sendall(request() + request(b"connection: close\r\n"))
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    answers = received.split(b"HTTP/1.1 200 OK\r\n")
    assert answers[0] == b"" and len(answers) == 3
    for answer in answers[1:]:
        head, _, rest = answer.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        assert len(rest) == length and b'"content":"pipelined"' in rest

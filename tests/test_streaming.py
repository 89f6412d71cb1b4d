"""Streams are relayed event by event, end cleanly or with an SSE error, and die with their client."""

from __future__ import annotations

import socket
import time

import httpx
import openai
import pytest

from tests.conftest import KEYS, GatewayProcess
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

MESSAGES = [{"role": "user", "content": "one two three four five six seven eight"}]


def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=KEYS["alpha"], max_retries=0, timeout=20)


def raw_stream(gw: GatewayProcess) -> list[bytes]:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    with httpx.stream(
        "POST", gw.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEYS['alpha']}"}, timeout=20
    ) as r:
        assert r.status_code == 200
        return [line.encode() for line in r.iter_lines() if line]


def test_events_are_relayed_as_they_arrive(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunks=8, chunk_delay_s=0.3))
    started = time.monotonic()
    arrivals = []
    for chunk in client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 8
    assert arrivals[-1] - arrivals[0] > 1.2  # the first piece did not wait for the rest (~2.1 s in all)


def test_events_split_across_tcp_reads(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunks=5, split_events=True))
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        if c.choices
    )  # type: ignore[arg-type]
    assert text == "echo: " + MESSAGES[0]["content"]


def test_break_mid_stream_ends_with_error_event_and_no_done(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunks=6, break_after=3, chunk_delay_s=0.05))
    lines = raw_stream(gateway)
    assert lines[-2:] == [b"event: error", lines[-1]] and lines[-1].startswith(b'data: {"error"')
    assert b"data: [DONE]" not in lines
    assert len(fake.requests) == 1  # never retried after the first byte
    fake.script(Behavior(chunks=6, break_after=3, chunk_delay_s=0.05))
    with pytest.raises(openai.APIError):
        list(client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))  # type: ignore[arg-type]


def test_garbage_mid_stream_ends_with_error_event(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunks=6, garbage_after=2, chunk_delay_s=0.05))  # past the first read
    lines = raw_stream(gateway)
    assert b"event: error" in lines and b"data: [DONE]" not in lines
    assert b"upstream_garbage" in lines[-1]


def test_stall_mid_stream_times_out_with_error_event(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunks=6, stall_after=2))  # idle_timeout_s = 2 in the test config
    started = time.monotonic()
    lines = raw_stream(gateway)
    assert 1.8 < time.monotonic() - started < 4
    assert b"event: error" in lines and b"idle_timeout" in lines[-1]


def test_error_before_first_event_is_an_http_error(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(status=503))
    with pytest.raises(openai.InternalServerError) as info:
        list(client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
    assert info.value.status_code == 502
    fake.script(Behavior(chunks=4, break_after=0))
    with pytest.raises(openai.InternalServerError):
        list(client(gateway).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))  # type: ignore[arg-type]


def test_client_disconnect_closes_the_upstream_within_1s(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunks=200, chunk_delay_s=0.05))
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "long"}]}'
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEYS['alpha']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    received = b""
    while received.count(b"data: ") < 3:
        received += sock.recv(65536)
    sock.close()
    closed = time.monotonic()
    seen = fake.wait_for_disconnect(5)
    assert seen is not None and seen - closed < 1.0
    assert len(fake.disconnects) == 1

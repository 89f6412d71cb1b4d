"""The fake OpenAI upstream behaves like OpenAI, and its fault knobs do what they say."""

from __future__ import annotations

import base64
import json
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import (
    Behavior,
    FakeOpenAI,
    error_payload,
    expected_embedding,
)

CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello there world"}],
}
STREAM = {**CHAT, "stream": True}
STREAM_USAGE = {**STREAM, "stream_options": {"include_usage": True}}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.base_url, timeout=10) as c:
        yield c


def sse(raw: bytes) -> list[str]:
    """The data of every event in a complete SSE body."""
    events = [e for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events), raw
    return [e[len(b"data: ") :].decode() for e in events]


def chunks(raw: bytes) -> list[dict[str, Any]]:
    data = sse(raw)
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def content(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def test_chat_non_stream_shape(fake: FakeOpenAI, client: httpx.Client) -> None:
    r = client.post("/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-test"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body == {
        "id": body["id"],
        "object": "chat.completion",
        "created": body["created"],
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "echo: hello there world",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    assert body["id"].startswith("chatcmpl-fake-")
    [req] = fake.requests
    assert (req.method, req.path, req.json) == ("POST", "/v1/chat/completions", CHAT)
    assert req.headers["authorization"] == "Bearer sk-test"
    assert json.loads(req.body) == CHAT


def test_list_content_parts_are_joined(client: httpx.Client) -> None:
    parts = [
        {"type": "text", "text": "a b"},
        {"type": "image_url"},
        {"type": "text", "text": "c"},
    ]
    req = {"model": "m", "messages": [{"role": "user", "content": parts}]}
    r = client.post("/chat/completions", json=req)
    assert r.json()["choices"][0]["message"]["content"] == "echo: a b c"


def test_stream_concatenation_equals_non_stream(client: httpx.Client) -> None:
    full = client.post("/chat/completions", json=CHAT).json()
    r = client.post("/chat/completions", json=STREAM)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = chunks(r.content)
    assert len(events) == 1 + 4 + 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert all("usage" not in e for e in events)
    assert content(events) == full["choices"][0]["message"]["content"]


def test_usage_chunk_only_with_include_usage(fake: FakeOpenAI, client: httpx.Client) -> None:
    usage = client.post("/chat/completions", json=CHAT).json()["usage"]
    events = chunks(client.post("/chat/completions", json=STREAM_USAGE).content)
    assert events[-1]["choices"] == [] and events[-1]["usage"] == usage
    assert all(e["usage"] is None for e in events[:-1])
    assert not any(e.get("usage") for e in chunks(client.post("/chat/completions", json=STREAM).content))
    fake.script(Behavior(usage=False))
    events = chunks(client.post("/chat/completions", json=STREAM_USAGE).content)
    assert not any(e.get("usage") for e in events) and events[-1]["choices"]


def test_tool_call_stream_and_non_stream(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    req = {
        "model": "m",
        "tools": tools,
        "messages": [{"role": "user", "content": "CALL_TOOL"}],
    }
    choice = client.post("/chat/completions", json=req).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call == {
        "id": "call_fake_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
    }
    events = chunks(client.post("/chat/completions", json={**req, "stream": True}).content)
    deltas = [e["choices"][0]["delta"] for e in events]
    first = deltas[0]["tool_calls"][0]
    assert first == {
        **call,
        "index": 0,
        "function": {"name": "lookup", "arguments": ""},
    }
    args = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1])
    assert args == call["function"]["arguments"]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_openai_sdk_round_trip(fake: FakeOpenAI) -> None:
    messages: Any = [{"role": "user", "content": "hi"}]
    with openai.OpenAI(base_url=fake.base_url, api_key="sk-x", max_retries=0) as sdk:
        done = sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)
        assert done.choices[0].message.content == "echo: hi"
        assert done.usage is not None
        got = list(
            sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
        assert text == "echo: hi"
        assert got[-1].usage == done.usage
        emb = sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert fake.requests[-1].json["encoding_format"] == "base64"
    assert [d.embedding for d in emb.data] == [
        expected_embedding("a"),
        expected_embedding("b"),
    ]


def test_legacy_completions(client: httpx.Client) -> None:
    body = client.post("/completions", json={"model": "i", "prompt": "say hi"}).json()
    assert body["object"] == "text_completion"
    assert body["choices"] == [{"text": "echo: say hi", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 3,
        "total_tokens": 5,
    }
    raw = client.post(
        "/completions",
        json={
            "model": "i",
            "prompt": "say hi",
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ).content
    events = chunks(raw)
    assert all(e["object"] == "text_completion" for e in events)
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == "echo: say hi"
    assert events[-1]["usage"] == body["usage"]


def test_split_events_are_many_small_writes(fake: FakeOpenAI) -> None:
    fake.script(Behavior(split_events=True, chunks=2))
    payload = json.dumps(STREAM).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    recvs = 0
    raw = b""
    with socket.create_connection(("127.0.0.1", fake.port), timeout=10) as sock:
        sock.sendall(request)
        while data := sock.recv(65536):
            recvs += 1
            raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    decoded = dechunk(body)
    events = chunks(decoded)
    assert content(events) == "echo: hello there world"
    assert recvs > 2 * len(sse(decoded)), recvs  # each event arrived in several pieces
    with httpx.Client(base_url=fake.base_url) as c:  # and an incremental parser copes
        fake.script(Behavior(split_events=True, chunks=2))
        with c.stream("POST", "/chat/completions", json=STREAM) as r:
            lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and len(lines) == len(events) + 1


def dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out += body[:size]
        body = body[size + 2 :]


def read_events(r: httpx.Response, limit: int | None = None) -> list[str]:
    events: list[str] = []
    for line in r.iter_lines():
        if line:
            events.append(line)
            if limit is not None and len(events) == limit:
                break
    return events


def test_break_after_ends_without_done(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Behavior(break_after=3))
    events: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("POST", "/chat/completions", json=STREAM) as r,
    ):
        events.extend(line for line in r.iter_lines() if line)
    assert len(events) == 3
    assert "data: [DONE]" not in events


def test_garbage_after(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Behavior(garbage_after=2))
    data = sse(client.post("/chat/completions", json=STREAM).content)
    assert len(data) == 3 and data[-1] == "{not json"
    json.loads(data[1])


def test_stall_after_then_client_leaves(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Behavior(stall_after=2))
    events: list[str] = []
    timeout = httpx.Timeout(10, read=0.5)
    with (
        pytest.raises(httpx.ReadTimeout),
        client.stream("POST", "/chat/completions", json=STREAM, timeout=timeout) as r,
    ):
        events.extend(line for line in r.iter_lines() if line)
    assert len(events) == 2
    assert fake.wait_for_disconnect(2) is not None


def test_script_is_fifo_then_default(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Behavior(status=429, headers={"Retry-After": "7"}), Behavior(status=500))
    fake.script(Behavior(body=b"<html>oops</html>", status=502, headers={"content-type": "text/html"}))
    assert fake.pending == 3
    first = client.post("/chat/completions", json=CHAT)
    assert first.status_code == 429 and first.headers["retry-after"] == "7"
    assert first.json() == error_payload(429)
    assert first.json()["error"]["code"] == "rate_limit_exceeded"
    assert client.post("/chat/completions", json=CHAT).status_code == 500
    third = client.post("/chat/completions", json=CHAT)
    assert (third.status_code, third.text, third.headers["content-type"]) == (
        502,
        "<html>oops</html>",
        "text/html",
    )
    assert client.post("/chat/completions", json=CHAT).status_code == 200
    assert fake.pending == 0 and len(fake.requests) == 4


def test_status_knob_gives_openai_error_body(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Behavior(status=503))
    r = client.post("/chat/completions", json=STREAM)
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "server_error"


def test_unknown_path_and_models(client: httpx.Client) -> None:
    r = client.post("/nope", json={})
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "Invalid URL (POST /v1/nope)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    models = client.get("/models").json()
    assert models["object"] == "list"
    assert {
        "id": "gpt-4o-mini",
        "object": "model",
        "created": 1700000000,
        "owned_by": "fake",
    } in models["data"]


def test_embeddings_float_base64_and_tokens(client: httpx.Client) -> None:
    body = client.post("/embeddings", json={"model": "e", "input": "one"}).json()
    assert body["object"] == "list" and body["model"] == "e"
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": expected_embedding("one")}]
    assert body["usage"] == {"prompt_tokens": 1, "total_tokens": 1}
    inputs = ["a", "b c", "d"]
    body = client.post("/embeddings", json={"model": "e", "input": inputs, "encoding_format": "base64"}).json()
    for i, item in enumerate(body["data"]):
        raw = base64.b64decode(item["embedding"])
        assert item["index"] == i
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == expected_embedding(inputs[i])
    tokens = client.post("/embeddings", json={"model": "e", "input": [[1, 2], [3]]}).json()
    assert tokens["data"][1]["embedding"] == expected_embedding([3])
    assert len(expected_embedding("x", 20)) == 20


def test_delay_s_delays_first_byte(fake: FakeOpenAI, client: httpx.Client) -> None:
    fake.script(Behavior(delay_s=0.3))
    start = time.monotonic()
    assert client.post("/chat/completions", json=CHAT).status_code == 200
    assert time.monotonic() - start >= 0.3


def test_disconnect_recorded_when_client_closes_mid_stream(fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunk_delay_s=0.05, chunks=50))
    with httpx.Client(base_url=fake.base_url, timeout=10) as c:
        with c.stream("POST", "/chat/completions", json=STREAM) as r:
            assert len(read_events(r, 2)) == 2
        closed = time.monotonic()
    when = fake.wait_for_disconnect(2)
    assert when is not None and when >= closed
    assert fake.wait_for_disconnect(0.1) is None  # each disconnect is returned once
    assert fake.wait_for_connections(0, 2)


def test_connections_open_tracks_the_client(fake: FakeOpenAI) -> None:
    assert fake.wait_for_connections(0, 2)
    with httpx.Client(base_url=fake.base_url) as c:
        c.post("/chat/completions", json=CHAT)
        c.post("/chat/completions", json=CHAT)
        assert fake.connections_open == 1
        a, b = fake.requests
        assert a.client_port == b.client_port  # keep-alive reused the connection
    assert fake.wait_for_connections(0, 2)


async def test_async_waits_do_not_block_the_callers_loop(fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunk_delay_s=0.05, chunks=50))
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=10) as c:
        async with c.stream("POST", "/chat/completions", json=STREAM) as r:
            lines = r.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
        assert await fake.wait_for_disconnect_async(2) is not None
        assert await fake.wait_for_connections_async(0, 2)

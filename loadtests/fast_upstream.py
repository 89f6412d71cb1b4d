"""The fastest fake OpenAI upstream we can write in Python, for load tests of the gateway.

One process, one thread: asyncio Protocol + httptools parser (+ uvloop when installed). Every
answer is a prebuilt byte string, so the cost per request is parsing it and one write:

- POST /v1/chat/completions: a fixed chat completion JSON, or, when the body has "stream": true,
  a fixed SSE stream of 14 chat.completion.chunk events (role, 12 content tokens, finish), a usage
  chunk and `data: [DONE]` -- the same bytes as ../shared/bench/nginx-upstream.conf, sent with a
  content-length in one write.
- POST /v1/embeddings: one fixed 4-float embedding.  GET /v1/models: one model.
- anything else: 404 with an OpenAI error body.

HTTP/1.1 keep-alive and pipelining are supported; `Connection: close` and HTTP/1.0 are honoured.

    python loadtests/fast_upstream.py --port 18000 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from typing import Any, cast

import httptools

try:
    import orjson

    def _loads(body: bytes) -> Any:
        return orjson.loads(body)

except ImportError:  # pragma: no cover - orjson is a gateway dependency

    def _loads(body: bytes) -> Any:
        return json.loads(body)


CREATED = 1700000000
MODEL = "gpt-4o-mini"
CHAT = {
    "id": "chatcmpl-mock",
    "object": "chat.completion",
    "created": CREATED,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
}
EMBEDDINGS = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3, 0.4]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 4, "total_tokens": 4},
}
MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "mock"}]}
NOT_FOUND = {"error": {"message": "Invalid URL", "type": "invalid_request_error", "param": None, "code": None}}
BAD_REQUEST = {"error": {"message": "Bad request", "type": "invalid_request_error", "param": None, "code": None}}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse_body() -> bytes:
    head = {"id": "c1", "object": "chat.completion.chunk", "created": CREATED, "model": MODEL}

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": f" tok{i}"}) for i in range(12)]
    events.append(chunk({}, "stop"))
    events.append({**head, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 12, "total_tokens": 24}})
    return b"".join(b"data: " + _dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def _response(status: str, content_type: str, body: bytes) -> tuple[bytes, bytes]:
    """(close variant, keep-alive variant) of a complete HTTP/1.1 response."""
    head = f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
    return (head + "connection: close\r\n\r\n").encode() + body, (head + "\r\n").encode() + body


R_CHAT = _response("200 OK", "application/json", _dumps(CHAT))
R_STREAM = _response("200 OK", "text/event-stream", _sse_body())
R_EMBEDDINGS = _response("200 OK", "application/json", _dumps(EMBEDDINGS))
R_MODELS = _response("200 OK", "application/json", _dumps(MODELS))
R_NOT_FOUND = _response("404 Not Found", "application/json", _dumps(NOT_FOUND))
R_BAD_REQUEST = _response("400 Bad Request", "application/json", _dumps(BAD_REQUEST))


def _wants_stream(body: bytes) -> bool:
    if b'"stream"' not in body:
        return False
    try:
        parsed = _loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = ("body", "parser", "transport", "url")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(R_BAD_REQUEST[0])
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        transport = self.transport
        if transport is None:
            return
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if method == b"POST" and path == b"/v1/chat/completions":
            answer = R_STREAM if _wants_stream(b"".join(self.body)) else R_CHAT
        elif method == b"POST" and path == b"/v1/embeddings":
            answer = R_EMBEDDINGS
        elif method == b"GET" and path == b"/v1/models":
            answer = R_MODELS
        else:
            answer = R_NOT_FOUND
        keep_alive = self.parser.should_keep_alive()
        transport.write(answer[1] if keep_alive else answer[0])
        if not keep_alive:
            transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=4096, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"fast_upstream listening on http://{host}:{port}/v1", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18000)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

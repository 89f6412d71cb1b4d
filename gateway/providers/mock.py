"""Kind `mock`: an in-process, deterministic model for offline demos and load tests.

It answers OpenAI's wire format through a `Transport`, so everything above it (parsing, stream
relay, usage, traces) runs exactly as it does for a real provider. A chat answer echoes the last
user message; streams are cut into the configured number of chunks with the configured delays.
Token counts are whitespace words: cheap, deterministic, and not pretending to be a tokenizer.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from base64 import b64encode
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from gateway.sse import DONE, frame
from gateway.upstream import UpstreamRequest, UpstreamResponse

JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _words(text: str) -> int:
    return len(text.split())


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def vector(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0, 6) for b in digest[:dims]]


class MockResponse:
    __slots__ = ("_body", "_chunk_delay", "_events", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", events: list[bytes] | None = None, chunk_delay: float = 0.0) -> None:
        self.status = status
        self.headers: Mapping[str, str] = SSE if events is not None else JSON
        self._body = body
        self._events = events or []
        self._chunk_delay = chunk_delay

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        for i, event in enumerate(self._events):
            if i and self._chunk_delay:
                await asyncio.sleep(self._chunk_delay)
            yield event

    def close(self) -> None:
        pass


class MockTransport:
    address = "in-process"

    def __init__(self, chunks: int = 8, chunk_delay_ms: float = 0.0, delay_ms: float = 0.0) -> None:
        self._chunks = chunks
        self._chunk_delay = chunk_delay_ms / 1000
        self._delay = delay_ms / 1000

    async def send(self, request: UpstreamRequest, first_byte_s: float) -> UpstreamResponse:
        if self._delay:
            await asyncio.sleep(self._delay)
        body = orjson.loads(request.body)
        if request.url.endswith("/embeddings"):
            return MockResponse(200, orjson.dumps(self._embeddings(body)))
        chat = request.url.endswith("/chat/completions")
        if chat:
            messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
            users = [m for m in messages if m.get("role") == "user"]
            prompt_text = " ".join(_text(m.get("content")) for m in messages)
            text = _text(users[-1].get("content")) if users else ""
        else:
            prompt = body.get("prompt")
            text = prompt_text = prompt if isinstance(prompt, str) else " ".join(p for p in prompt or [] if isinstance(p, str))
        usage = {"prompt_tokens": _words(prompt_text), "completion_tokens": _words(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        model = body.get("model", "echo")
        if body.get("stream"):
            return MockResponse(200, events=self._stream(chat, model, text, usage), chunk_delay=self._chunk_delay)
        return MockResponse(200, orjson.dumps(self._complete(chat, model, text, usage)))

    def _complete(self, chat: bool, model: str, text: str, usage: dict[str, int]) -> dict[str, Any]:
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            return {
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": usage,
            }
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
        return {
            "id": "cmpl-mock",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": usage,
        }

    def _stream(self, chat: bool, model: str, text: str, usage: dict[str, int]) -> list[bytes]:
        created = int(time.time())
        obj, ident = ("chat.completion.chunk", "chatcmpl-mock") if chat else ("text_completion", "cmpl-mock")

        def chunk(piece: str | None, finish: str | None = None) -> bytes:
            if chat:
                delta: dict[str, Any] = {} if piece is None else {"content": piece}
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
            return frame(orjson.dumps({"id": ident, "object": obj, "created": created, "model": model, "choices": [choice]}))

        events = [chunk(piece) for piece in _split(text, self._chunks)]
        if chat:
            events.insert(
                0,
                frame(
                    orjson.dumps(
                        {
                            "id": ident,
                            "object": obj,
                            "created": created,
                            "model": model,
                            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                        }
                    )
                ),
            )
        events.append(chunk(None, "stop"))
        tail = {"id": ident, "object": obj, "created": created, "model": model, "choices": [], "usage": usage}
        events.append(frame(orjson.dumps(tail)))
        events.append(DONE)
        return events

    def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else list(inputs or [])
        texts = [i if isinstance(i, str) else " ".join(map(str, i)) if isinstance(i, list) else str(i) for i in items]
        base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vec = vector(text)
            embedding: Any = b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if base64 else vec
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(_words(t) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "echo"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

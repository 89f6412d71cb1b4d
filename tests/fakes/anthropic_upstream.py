"""A fake Anthropic Messages API on a real loopback socket, speaking Anthropic's exact wire format.

It reuses `FakeOpenAI`'s server (thread, recording, scripting, TCP fault knobs: `split_events`,
`chunk_delay_s`, `break_after`...) and answers `POST /v1/messages` only, the way the real API does:

    fake = FakeAnthropic().start()
    fake.script(Behavior(status=529))          # the next request is answered "overloaded"
    fake.base_url                              # the API root; the gateway appends /v1/messages
    fake.requests[0].json["system"]            # what the fake received

Like the real API it refuses what the gateway must never send: a missing `x-api-key` (401) or
`anthropic-version` (400), no `max_tokens`, a `system` role inside `messages`, turns that do not
alternate user/assistant starting with user, empty content, malformed image sources, and tool
results that answer no `tool_use` of the turn before (400, `invalid_request_error`). With `thinking`
enabled it wants `budget_tokens` >= 1024 and below `max_tokens`, and the last assistant turn, when it
holds a `tool_use`, to start with its (signed) thinking block, as the real API does.

Answers are deterministic: the text is "echo: " + the text of the last user turn. When the request
has `tools` and that text contains CALL_TOOL, the answer is a text block (TOOL_PREAMBLE) and a
`tool_use` block calling the first tool with TOOL_INPUT, `stop_reason` "tool_use". Token counts are
whitespace-separated words (input: system + every text block; output: the answer's text, plus the
words of the tool input's JSON). Streams follow the documented event sequence: message_start,
content_block_start, ping, content_block_delta (text_delta / input_json_delta, `chunks` pieces per
block; a tool's first piece is ""), content_block_stop, message_delta, message_stop. With thinking
enabled the answer starts with a thinking block ("Thinking about: " + that text, signature
"sig-N"; streamed as thinking_delta pieces and a signature_delta), then, with `redacted_thinking`, a
redacted_thinking block.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes import openai_upstream
from tests.fakes.openai_upstream import FakeOpenAI

TOOL_PREAMBLE = "Let me look that up."
TOOL_INPUT = {"location": "San Francisco, CA", "unit": "celsius"}
TOOL_USE_ID = "toolu_01A09q90qw90lq917835lq9"

ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", 'messages: roles must alternate between "user" and "assistant"'),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "An unexpected error has occurred internal to Anthropic's systems."),
    529: ("overloaded_error", "Overloaded"),
}


@dataclass
class Behavior(openai_upstream.Behavior):
    """`openai_upstream.Behavior` plus Anthropic's own knobs."""

    message: str | None = None  # the error message, for status >= 400
    cache_read: int = 0  # reported as cache_read_input_tokens
    cache_creation: int = 0  # reported as cache_creation_input_tokens
    stop_reason: str | None = None  # instead of end_turn / tool_use
    redacted_thinking: bool = False  # with thinking on: a redacted_thinking block after the thinking one
    error_event: str | None = None  # streaming: send an `error` event of this type ...
    error_after: int = 1  # ... after this many events (1: right after message_start), then end


class InvalidRequest(Exception):
    pass


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def split(text: str, parts: int) -> list[str]:
    """`parts` roughly equal pieces of `text` (some may be empty) that join to it."""
    n, parts = len(text), max(parts, 1)
    return [text[i * n // parts : (i + 1) * n // parts] for i in range(parts)]


def _words(text: str) -> int:
    return len(text.split())


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]


def error_body(status: int, message: str | None = None) -> dict[str, Any]:
    kind, default = ERRORS.get(status, ("api_error", "Internal server error"))
    return {"type": "error", "error": {"type": kind, "message": message or default}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


def _check_block(block: Any, role: str, previous_tool_ids: set[str]) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind == "text" and not block.get("text"):
        raise InvalidRequest("messages: text content blocks must be non-empty")
    if kind == "image":
        source = block.get("source") or {}
        ok = (source.get("type") == "base64" and source.get("media_type") and source.get("data")) or (
            source.get("type") == "url" and source.get("url")
        )
        if not ok:
            raise InvalidRequest("messages: image source is invalid")
    if kind == "tool_use" and (role != "assistant" or not isinstance(block.get("input"), dict)):
        raise InvalidRequest("messages: tool_use blocks belong to assistant turns and need an input object")
    if kind == "tool_result" and block.get("tool_use_id") not in previous_tool_ids:
        raise InvalidRequest("messages: tool_result blocks must answer a tool_use of the previous assistant turn")
    if kind == "thinking" and (role != "assistant" or not isinstance(block.get("thinking"), str) or not block.get("signature")):
        raise InvalidRequest("messages: thinking blocks belong to assistant turns and need their thinking and signature")
    if kind == "redacted_thinking" and (role != "assistant" or not block.get("data")):
        raise InvalidRequest("messages: redacted_thinking blocks belong to assistant turns and need their data")
    if kind not in ("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"):
        raise InvalidRequest(f"messages: unknown content block type {kind!r}")


def validate(req: Any) -> None:
    if not isinstance(req, dict) or not isinstance(req.get("model"), str):
        raise InvalidRequest("model: Field required")
    if not isinstance(req.get("max_tokens"), int):
        raise InvalidRequest("max_tokens: Field required")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: at least one message is required")
    tool_ids: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest(f'messages: Unexpected role "{role}". The Messages API accepts a top-level `system` parameter')
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise InvalidRequest(ERRORS[400][1])
        content = message.get("content")
        if not content:
            raise InvalidRequest(f"messages.{i}: all messages must have non-empty content")
        for block in content if isinstance(content, list) else []:
            _check_block(block, role, tool_ids)
        tool_ids = {b["id"] for b in content if isinstance(b, dict) and b.get("type") == "tool_use"} if isinstance(content, list) else set()
    system = req.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise InvalidRequest("system: Input should be a valid string or list")
    thinking = req.get("thinking")
    if thinking is not None:
        budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
        if not isinstance(thinking, dict) or thinking.get("type") != "enabled" or not isinstance(budget, int) or budget < 1024:
            raise InvalidRequest("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if req["max_tokens"] <= budget:
            raise InvalidRequest("`max_tokens` must be greater than `thinking.budget_tokens`")
        assistant = [m for m in messages if m["role"] == "assistant"]
        last = assistant[-1]["content"] if assistant else []
        if (
            isinstance(last, list)
            and any(b.get("type") == "tool_use" for b in last)
            and last[0].get("type") not in ("thinking", "redacted_thinking")
        ):
            raise InvalidRequest(
                "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `text`. When `thinking` is enabled, "
                "a final `assistant` message must start with a thinking block."
            )


class FakeAnthropic(FakeOpenAI):
    """A fake Anthropic on 127.0.0.1 (see the module docstring)."""

    base_path = ""
    behavior_type = Behavior

    def _scripted_error(self, n: int, behavior: Behavior) -> web.Response:
        return self._anthropic_error(n, behavior, behavior.status, behavior.message)

    async def _respond(
        self, request: web.Request, parsed: Any, raw: bytes, behavior: openai_upstream.Behavior, n: int
    ) -> web.StreamResponse:
        b, scripted = self._scripted(behavior, n)
        if scripted is not None:
            return scripted
        if (request.method, request.path) != ("POST", "/v1/messages"):
            return self._anthropic_error(n, b, 404, f"Not found: {request.method} {request.path}")
        if not request.headers.get("x-api-key"):
            return self._anthropic_error(n, b, 401, "x-api-key header is required")
        if not request.headers.get("anthropic-version"):
            return self._anthropic_error(n, b, 400, "anthropic-version: header is required")
        try:
            validate(parsed)
        except InvalidRequest as exc:
            return self._anthropic_error(n, b, 400, str(exc))
        message = self._message(parsed, b, n)
        if parsed.get("stream") is True:
            return await self._stream(request, n, b, self._events(message, b))
        return self._json(n, b, message)

    def _anthropic_error(self, n: int, behavior: Behavior, status: int, message: str | None) -> web.Response:
        body = json.dumps(error_body(status, message)).encode()
        return web.Response(status=status, body=body, headers=self._headers(n, behavior, "application/json"))

    @staticmethod
    def _message(req: dict[str, Any], b: Behavior, n: int) -> dict[str, Any]:
        last_user = next(m for m in reversed(req["messages"]) if m["role"] == "user")
        user_text = " ".join(_texts(last_user["content"]))
        prompt = [*_texts(req.get("system") or []), *(t for m in req["messages"] for t in _texts(m["content"]))]
        tools = req.get("tools") or []
        if tools and "CALL_TOOL" in user_text:
            tool = {"type": "tool_use", "id": TOOL_USE_ID, "name": tools[0]["name"], "input": TOOL_INPUT}
            content: list[dict[str, Any]] = [{"type": "text", "text": TOOL_PREAMBLE}, tool]
            output = _words(TOOL_PREAMBLE) + _words(json.dumps(TOOL_INPUT))
            stop = "tool_use"
        else:
            text = "echo: " + user_text
            content, output, stop = [{"type": "text", "text": text}], _words(text), "end_turn"
        if req.get("thinking"):
            thought = "Thinking about: " + user_text
            thinking: list[dict[str, Any]] = [{"type": "thinking", "thinking": thought, "signature": f"sig-{n}"}]
            if b.redacted_thinking:
                thinking.append({"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP"})
            content = [*thinking, *content]
            output += _words(thought)
        usage = {
            "input_tokens": sum(_words(t) for t in prompt),
            "cache_creation_input_tokens": b.cache_creation,
            "cache_read_input_tokens": b.cache_read,
            "output_tokens": output,
        }
        return {
            "id": f"msg_fake_{n}",
            "type": "message",
            "role": "assistant",
            "model": req["model"],
            "content": content,
            "stop_reason": b.stop_reason or stop,
            "stop_sequence": None,
            "usage": usage,
        }

    @staticmethod
    def _events(message: dict[str, Any], b: Behavior) -> list[bytes]:
        start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
        events = [_sse("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                opening: dict[str, Any] = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": piece} for piece in split(block["text"], b.chunks) if piece]
            elif block["type"] == "thinking":
                opening = {"type": "thinking", "thinking": ""}
                deltas = [{"type": "thinking_delta", "thinking": piece} for piece in split(block["thinking"], b.chunks) if piece]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            elif block["type"] == "redacted_thinking":
                opening, deltas = block, []
            else:
                opening = {**block, "input": {}}
                pieces = ["", *split(json.dumps(block["input"]), b.chunks)]
                deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
            events.append(_sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening}))
            if index == 0:
                events.append(_sse("ping", {"type": "ping"}))
            events += [_sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
            events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        usage = {"output_tokens": message["usage"]["output_tokens"]}
        events.append(_sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        events.append(_sse("message_stop", {"type": "message_stop"}))
        if b.error_event is not None:
            text = ERRORS[529][1] if b.error_event == "overloaded_error" else "An unexpected error has occurred."
            error = {"type": "error", "error": {"type": b.error_event, "message": text}}
            events = [*events[: b.error_after], _sse("error", error)]
        return events

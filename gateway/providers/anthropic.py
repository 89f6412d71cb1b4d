"""Kind `anthropic`: Claude through the Messages API (`POST {base_url}/v1/messages`).

Requests: system and developer messages become `system`; consecutive messages of one role merge
into one turn (the API alternates user and assistant, and wants every tool result answering a turn
in one user message); text and image parts become content blocks (a data URL as a base64 source,
any other URL as a url source; a part's `cache_control` is kept, so clients can use prompt caching);
assistant `tool_calls` become `tool_use` blocks and `tool` messages `tool_result` blocks; `tools`,
`tool_choice`, `parallel_tool_calls: false`, `stop`, `temperature`, `top_p`, `top_k` and `user`
map to their counterparts. `max_tokens` is required by Anthropic: absent, it is 4096, which every
Claude 3 and later model accepts. Parameters Claude lacks (`seed`, `presence_penalty`,
`frequency_penalty`, `logit_bias`, `logprobs`, `response_format`, ...) are dropped; `n > 1` is refused.

Usage: OpenAI counts cached prompt tokens inside `prompt_tokens`; Anthropic reports them apart, so
`prompt_tokens` = input + cache-read + cache-creation tokens, with the cache reads as
`prompt_tokens_details.cached_tokens` and the writes as `prompt_tokens_details.cache_creation_tokens`.

Extended thinking: `reasoning_effort` (`minimal`/`low`/`medium`/`high`) turns it on with a budget of
1024/1024/2048/4096 tokens (`none` leaves it off), or a `thinking` object in the body (SDK: `extra_body`) goes as it is;
`max_tokens` must then exceed the budget (absent, it is the budget plus 4096). As other gateways do,
the answer's thinking comes back as `message.reasoning_content` (the text) and
`message.thinking_blocks` (Anthropic's `thinking` blocks with their signatures, and
`redacted_thinking` blocks); streams send `delta.reasoning_content` as the thinking arrives and one
`delta.thinking_blocks` per block once it is complete (signed). An assistant message's
`thinking_blocks` go back first in its turn, which Anthropic requires when thinking meets tool use.

Streams are translated event by event, keeping only a block-index -> tool-call-index map. The role
chunk is held back until the first content, so an `error` event that arrives right after
`message_start` (typically `overloaded_error`) still fails the request before its first byte, where
it may be retried or fall back. A `tool_use` block's start carries the call's id and name; each
`input_json_delta` is one piece of its arguments. Unknown event and delta types are ignored, as
Anthropic's versioning policy asks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.errors import BadRequest, GatewayError
from gateway.providers.base import Deployment, Operation, Reply, StreamState, Usage
from gateway.providers.errors import provider_error
from gateway.providers.openai import error_message, garbage, parse_object
from gateway.providers.shapes import (
    Chunks,
    choice,
    completion,
    data_url,
    field,
    function_of,
    image_url,
    parts_of,
    reasoning_budget,
    single_choice,
    stop_sequences,
    text_of,
    token_cap,
    tool_arguments,
    tool_call,
    tool_calls_of,
    unsupported_operation,
    unsupported_part,
)
from gateway.sse import Event
from gateway.upstream import UpstreamRequest

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 4096
THINKING_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}  # reasoning_effort -> budget_tokens
THINKING_BLOCKS = ("thinking", "redacted_thinking")

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# the HTTP status Anthropic documents for each error type, for errors that arrive inside a stream
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# ---- request ---------------------------------------------------------------------------------


def _block(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        block: dict[str, Any] | None = {"type": "text", "text": text} if text else None
    elif kind == "image_url":
        url = image_url(part)
        inline = data_url(url)
        source = {"type": "url", "url": url} if inline is None else {"type": "base64", "media_type": inline[0], "data": inline[1]}
        block = {"type": "image", "source": source}
    else:
        raise unsupported_part("anthropic", part)
    if block is not None and "cache_control" in part:
        block["cache_control"] = part["cache_control"]
    return block


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [block for part in parts_of(content) if (block := _block(part)) is not None]


def _assistant(message: dict[str, Any]) -> list[dict[str, Any]]:
    thinking = message.get("thinking_blocks")
    blocks = [b for b in thinking if isinstance(b, dict) and b.get("type") in THINKING_BLOCKS] if isinstance(thinking, list) else []
    blocks += _blocks(message.get("content"))
    for call in tool_calls_of(message):
        name = call["function"].get("name")
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": name, "input": tool_arguments(call)})
    return blocks


def _tool_result(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "tool_result", "tool_use_id": message.get("tool_call_id"), "content": text_of(message.get("content"))}]


TURNS: dict[str, tuple[str, Callable[[dict[str, Any]], list[dict[str, Any]]]]] = {
    "user": ("user", lambda m: _blocks(m.get("content"))),
    "assistant": ("assistant", _assistant),
    "tool": ("user", _tool_result),
}


def conversation(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating turns) for OpenAI `messages`."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages if isinstance(messages, list) else []:
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.extend(_blocks(message.get("content")))
            continue
        if role not in TURNS:
            raise BadRequest(f"Messages with role {role!r} are not supported by providers of kind 'anthropic'.", param="messages")
        turn_role, translate = TURNS[role]
        blocks = translate(message)
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    return system, turns


def _tool_choice(body: dict[str, Any]) -> dict[str, Any] | None:
    wanted = body.get("tool_choice")
    if isinstance(wanted, dict):
        choice_: dict[str, Any] | None = {"type": "tool", "name": function_of(wanted)["name"]}
    else:
        choice_ = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}.get(wanted or "")
    if body.get("parallel_tool_calls") is False:
        choice_ = {**(choice_ or {"type": "auto"}), "disable_parallel_tool_use": True}
    return choice_


def _tool(tool: Any) -> dict[str, Any]:
    function = function_of(tool)
    out = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _thinking(body: dict[str, Any]) -> dict[str, Any] | None:
    given = body.get("thinking")
    if isinstance(given, dict):
        return given
    budget = reasoning_budget(body, THINKING_BUDGETS)
    return {"type": "enabled", "budget_tokens": budget} if budget else None


def messages_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    single_choice("anthropic", body)
    system, turns = conversation(body.get("messages"))
    max_tokens = token_cap(body)
    thinking = _thinking(body)
    budget = thinking.get("budget_tokens") if thinking is not None and thinking.get("type") == "enabled" else None
    if isinstance(budget, int) and max_tokens is not None and max_tokens <= budget:
        raise BadRequest(
            f"max_tokens ({max_tokens}) must be greater than the thinking budget ({budget} tokens): Anthropic counts thinking as output.",
            param="max_tokens",
        )
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS + (budget if isinstance(budget, int) else 0)
    out: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": turns}
    if thinking is not None:
        out["thinking"] = thinking
    if system:
        out["system"] = system
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    if stop := stop_sequences(body):
        out["stop_sequences"] = stop
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if tools := body.get("tools"):
        out["tools"] = [_tool(tool) for tool in tools]
        if tool_choice := _tool_choice(body):
            out["tool_choice"] = tool_choice
    if body.get("stream"):
        out["stream"] = True
    return out


# ---- response --------------------------------------------------------------------------------


def usage_of(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(usage.get("input_tokens") or 0) + read + written,
        completion_tokens=int(usage.get("output_tokens") or 0),
        cached_tokens=read,
        cache_write_tokens=written,
    )


def finish_reason(stop_reason: Any) -> str | None:
    return STOP_REASONS.get(stop_reason, "stop") if stop_reason else None


def chat_reply(raw: bytes) -> Reply:
    data = parse_object(raw)
    content = data.get("content")
    if data.get("type") != "message" or not isinstance(content, list):
        raise garbage()
    texts, calls, thinking = [], [], []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(tool_call(block.get("id") or "", block.get("name") or "", orjson.dumps(block.get("input") or {})))
        elif kind in THINKING_BLOCKS:
            thinking.append(block)
    finish = finish_reason(data.get("stop_reason"))
    usage = usage_of(data.get("usage"))
    answer = completion(data.get("id") or "", data.get("model") or "", [choice(0, "".join(texts), calls, finish)], usage)
    if thinking:
        message = answer["choices"][0]["message"]
        message["reasoning_content"] = "".join(b.get("thinking") or "" for b in thinking)
        message["thinking_blocks"] = thinking
    return Reply(data=answer, raw=None, usage=usage, finish_reason=finish)


def stream_error(data: dict[str, Any]) -> GatewayError:
    error = field(data, "error")
    message = error.get("message") if isinstance(error.get("message"), str) else "the provider reported an error mid-stream"
    return provider_error("anthropic", ERROR_STATUS.get(str(error.get("type")), 500), message, None)


class AnthropicStream:
    __slots__ = ("_chunks", "_thinking", "_tools", "_usage", "state")

    def __init__(self, include_usage: bool) -> None:
        self.state = StreamState(include_usage=include_usage)
        self._chunks = Chunks(self.state)
        self._tools: dict[Any, int] = {}  # content block index -> OpenAI tool call index
        self._thinking: dict[Any, list[str]] = {}  # content block index -> the thinking text so far
        self._usage: dict[str, Any] = {}  # Anthropic's usage fields, as last reported

    def feed(self, event: Event) -> bytes:
        data = parse_object(event.data)
        handler = self.HANDLERS.get(data.get("type"))
        return handler(self, data) if handler is not None else b""

    def _message_start(self, data: dict[str, Any]) -> bytes:
        message = field(data, "message")
        self.state.response_id = message.get("id")
        self.state.response_model = message.get("model")
        self._usage.update(message.get("usage") or {})
        return b""

    def _block_start(self, data: dict[str, Any]) -> bytes:
        block = field(data, "content_block")
        if block.get("type") == "tool_use":
            index = self._tools[data.get("index")] = len(self._tools)
            call = {"index": index, "id": block.get("id"), "type": "function", "function": {"name": block.get("name"), "arguments": ""}}
            return self._chunks.delta({"tool_calls": [call]})
        if block.get("type") == "text" and block.get("text"):
            return self._chunks.text(block["text"])
        if block.get("type") == "thinking":
            text = block.get("thinking") or ""
            self._thinking[data.get("index")] = [text]
            return self._chunks.delta({"reasoning_content": text}) if text else b""
        if block.get("type") == "redacted_thinking":
            return self._chunks.delta({"thinking_blocks": [block]})
        return b""

    def _block_delta(self, data: dict[str, Any]) -> bytes:
        delta = field(data, "delta")
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return self._chunks.text(delta["text"])
        index = self._tools.get(data.get("index"))
        if kind == "input_json_delta" and delta.get("partial_json") and index is not None:
            return self._chunks.delta({"tool_calls": [{"index": index, "function": {"arguments": delta["partial_json"]}}]})
        thinking = self._thinking.get(data.get("index"))
        if kind == "thinking_delta" and delta.get("thinking") and thinking is not None:
            thinking.append(delta["thinking"])
            return self._chunks.delta({"reasoning_content": delta["thinking"]})
        if kind == "signature_delta" and thinking is not None:  # the block is complete: send it whole, signed
            block = {"type": "thinking", "thinking": "".join(thinking), "signature": delta.get("signature")}
            return self._chunks.delta({"thinking_blocks": [block]})
        return b""

    def _message_delta(self, data: dict[str, Any]) -> bytes:
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if v is not None})
        self.state.usage = usage_of(self._usage)
        delta = field(data, "delta")
        finish = finish_reason(delta.get("stop_reason"))
        if finish is None:
            return b""
        self.state.finish_reason = finish
        return self._chunks.delta({}, finish)

    def _message_stop(self, data: dict[str, Any]) -> bytes:
        self.state.done = True
        return self._chunks.usage()

    def _error(self, data: dict[str, Any]) -> bytes:
        raise stream_error(data)

    HANDLERS: dict[Any, Callable[[AnthropicStream, dict[str, Any]], bytes]] = {
        "message_start": _message_start,
        "content_block_start": _block_start,
        "content_block_delta": _block_delta,
        "message_delta": _message_delta,
        "message_stop": _message_stop,
        "error": _error,
    }


class AnthropicWire:
    kind = "anthropic"

    def __init__(self, version: str = "2023-06-01") -> None:
        self.version = version

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key, "anthropic-version": self.version}

    def request(self, op: Operation, body: dict[str, Any], deployment: Deployment) -> UpstreamRequest:
        if op is not Operation.CHAT:
            raise unsupported_operation(self.kind, op)
        body = messages_request(body, deployment.model)
        return UpstreamRequest(deployment.base_url + "/v1/messages", deployment.headers, orjson.dumps(body))

    def reply(self, op: Operation, raw: bytes) -> Reply:
        return chat_reply(raw)

    def stream(self, op: Operation, include_usage: bool) -> AnthropicStream:
        return AnthropicStream(include_usage)

    def error_message(self, raw: bytes) -> str | None:
        return error_message(raw)

    def retry_after(self, raw: bytes) -> str | None:
        return None  # the retry-after header says it

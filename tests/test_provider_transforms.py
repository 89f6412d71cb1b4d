# ruff: noqa: E501  (recorded wire examples keep their long lines verbatim)
"""Provider modules are pure transforms: recorded wire examples in, OpenAI shapes out.

The Anthropic and Gemini examples below follow the providers' API references (field for field, in
their order). Streams are fed through the real SSE decoder one byte at a time, which is the
strictest split a network can produce.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import orjson
import pytest

from gateway.errors import BadRequest, GatewayError, RateLimited, UpstreamError, UpstreamStatusError
from gateway.providers.anthropic import AnthropicStream, AnthropicWire
from gateway.providers.azure import AzureStream, AzureWire
from gateway.providers.base import Deployment, Operation, StreamTranslator, WireFormat
from gateway.providers.errors import provider_error
from gateway.providers.gemini import GeminiStream, GeminiWire
from gateway.providers.mock import MockTransport
from gateway.providers.shapes import finish_embeddings
from gateway.sse import SSEDecoder

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BAAAMBAQAY3Y2wAAAAAElFTkSuQmCC"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
            "additionalProperties": False,
        },
    },
}
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "developer", "content": [{"type": "text", "text": "Use celsius."}]},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this image, and the weather?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ],
    },
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    {"role": "user", "content": "Thanks"},
]


def deployment(wire: WireFormat, model: str, base_url: str) -> Deployment:
    headers = {"content-type": "application/json", **wire.auth_headers("secret-key")}
    return Deployment("p", model, 1.0, wire, MockTransport(), base_url, headers, f"p/{model}")


def upstream_json(wire: WireFormat, body: dict[str, Any], op: Operation = Operation.CHAT, model: str = "m") -> Any:
    request = wire.request(op, body, deployment(wire, model, "https://api.example"))
    return json.loads(request.body)


def feed_bytewise(translator: StreamTranslator, wire_bytes: bytes) -> list[bytes]:
    """Every non-empty output of the translator, feeding the stream one byte at a time."""
    decoder, out = SSEDecoder(), []
    for i in range(len(wire_bytes)):
        for event in decoder.feed(wire_bytes[i : i + 1]):
            piece = translator.feed(event)
            if piece:
                out.append(piece)
    assert not decoder.pending
    return out


def chunks_of(outputs: list[bytes]) -> list[dict[str, Any]]:
    chunks = []
    for output in outputs:
        for block in output.split(b"\n\n"):
            if block:
                assert block.startswith(b"data: ")
                chunks.append(json.loads(block[6:]))
    return chunks


def reassemble(chunks: list[dict[str, Any]]) -> tuple[str, dict[int, dict[str, str]], str | None]:
    """(text, tool calls by index, finish_reason) as an OpenAI client would rebuild them."""
    text, finish = "", None
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] += call.get("id") or ""
                slot["name"] += (call.get("function") or {}).get("name") or ""
                slot["arguments"] += (call.get("function") or {}).get("arguments") or ""
            finish = choice["finish_reason"] or finish
    return text, calls, finish


# ---- Anthropic ---------------------------------------------------------------------------------


def test_anthropic_request_maps_a_whole_conversation() -> None:
    body = {
        "model": "claude",
        "messages": CONVERSATION,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "stop": "END",
        "temperature": 0.3,
        "top_p": 0.9,
        "user": "user-42",
        "seed": 7,
    }
    sent = upstream_json(AnthropicWire(), body, model="claude-sonnet-4-20250514")
    assert sent == {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 4096,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this image, and the weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
                    {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temp": 21}'},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
                    {"type": "text", "text": "Thanks"},
                ],
            },
        ],
        "system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Use celsius."}],
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
        "tools": [
            {
                "name": "get_weather",
                "input_schema": WEATHER_TOOL["function"]["parameters"],
                "description": "Get the current weather in a given location",
            }
        ],
        "tool_choice": {"type": "any"},
    }


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"tool_choice": "auto"}, {"type": "auto"}),
        ({"tool_choice": "none"}, {"type": "none"}),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, {"type": "tool", "name": "get_weather"}),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        ({}, None),
    ],
)
def test_anthropic_tool_choice(extra: dict[str, Any], expected: dict[str, Any] | None) -> None:
    sent = upstream_json(AnthropicWire(), {"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER_TOOL], **extra})
    assert sent.get("tool_choice") == expected


def test_anthropic_token_cap_stream_and_cache_control() -> None:
    part = {"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}
    body = {"messages": [{"role": "user", "content": [part]}], "max_completion_tokens": 50, "max_tokens": 99, "stream": True}
    sent = upstream_json(AnthropicWire(), body)
    assert sent["max_tokens"] == 50 and sent["stream"] is True
    assert sent["messages"][0]["content"] == [{"type": "text", "text": "long context", "cache_control": {"type": "ephemeral"}}]


def test_anthropic_url_and_headers() -> None:
    wire = AnthropicWire("2023-06-01")
    request = wire.request(Operation.CHAT, {"messages": []}, deployment(wire, "m", "https://api.anthropic.com"))
    assert request.url == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == "secret-key" and request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers


@pytest.mark.parametrize(
    ("op", "body"),
    [
        (Operation.COMPLETION, {"prompt": "hi"}),
        (Operation.EMBEDDINGS, {"input": "hi"}),
        (Operation.CHAT, {"messages": [{"role": "user", "content": "hi"}], "n": 2}),
        (Operation.CHAT, {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
        (Operation.CHAT, {"messages": [{"role": "function", "content": "x"}]}),
        (Operation.CHAT, {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{no"}}]}]}),
        (Operation.CHAT, {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web_search"}]}),
    ],
)
def test_anthropic_refuses_what_it_cannot_translate(op: Operation, body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        upstream_json(AnthropicWire(), body, op)


# From the Messages API reference: a text block, then a tool_use block; usage with prompt caching.
ANTHROPIC_MESSAGE = b"""{
  "id": "msg_01Aq9w938a90dw8q",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-20250514",
  "content": [
    {"type": "text", "text": "I'll check the weather."},
    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA"}}
  ],
  "stop_reason": "tool_use",
  "stop_sequence": null,
  "usage": {"input_tokens": 2095, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1800, "output_tokens": 503}
}"""


def test_anthropic_reply() -> None:
    reply = AnthropicWire().reply(Operation.CHAT, ANTHROPIC_MESSAGE)
    assert reply.raw is None and reply.finish_reason == "tool_calls"
    assert reply.data["id"] == "msg_01Aq9w938a90dw8q" and reply.data["model"] == "claude-sonnet-4-20250514"
    assert reply.data["object"] == "chat.completion"
    message = reply.data["choices"][0]["message"]
    assert message["content"] == "I'll check the weather."
    assert message["tool_calls"] == [
        {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"San Francisco, CA"}'},
        }
    ]
    assert reply.data["usage"] == {
        "prompt_tokens": 2095 + 100 + 1800,
        "completion_tokens": 503,
        "total_tokens": 2095 + 100 + 1800 + 503,
        "prompt_tokens_details": {"cached_tokens": 1800, "cache_creation_tokens": 100},
    }
    assert reply.usage is not None and reply.usage.cache_write_tokens == 100 and not reply.usage.estimated


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter")],
)
def test_anthropic_stop_reasons(stop_reason: str, finish: str) -> None:
    raw = ANTHROPIC_MESSAGE.replace(b'"stop_reason": "tool_use"', f'"stop_reason": "{stop_reason}"'.encode())
    assert AnthropicWire().reply(Operation.CHAT, raw).finish_reason == finish


def test_anthropic_reply_that_is_not_a_message_is_garbage() -> None:
    with pytest.raises(UpstreamError) as info:
        AnthropicWire().reply(Operation.CHAT, b'{"type": "completion", "completion": "hi"}')
    assert info.value.code == "upstream_garbage"


# From the streaming reference ("Streaming request with tool use"), shortened.
ANTHROPIC_STREAM = b"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-1-20250805","stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":400,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", let's check."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"location\\":"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \\"San Francisco, CA\\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""


@pytest.mark.parametrize("include_usage", [True, False])
def test_anthropic_stream_bytewise(include_usage: bool) -> None:
    translator = AnthropicWire().stream(Operation.CHAT, include_usage)
    chunks = chunks_of(feed_bytewise(translator, ANTHROPIC_STREAM))
    text, calls, finish = reassemble(chunks)
    assert text == "Okay, let's check."
    assert calls == {0: {"id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "arguments": '{"location": "San Francisco, CA"}'}}
    assert finish == "tool_calls"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Okay"}  # the role rides on the first content
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:] if c["choices"])
    assert {c["id"] for c in chunks} == {"msg_014p7gG3wDgGV9EUtLvnow3U"} and {c["object"] for c in chunks} == {"chat.completion.chunk"}
    usage = {"prompt_tokens": 872, "completion_tokens": 89, "total_tokens": 961, "prompt_tokens_details": {"cached_tokens": 400}}
    assert [c["usage"] for c in chunks if "usage" in c] == ([usage] if include_usage else [])
    if include_usage:
        assert chunks[-1]["choices"] == []
    state = translator.state
    assert state.done and state.finish_reason == "tool_calls" and state.usage is not None and state.usage.completion_tokens == 89
    assert "".join(state.text) == "Okay, let's check."


def test_anthropic_stream_emits_nothing_before_content() -> None:
    """message_start and ping produce no bytes: an error right after them is still a plain HTTP error."""
    head = ANTHROPIC_STREAM.split(b"event: content_block_delta")[0]
    assert feed_bytewise(AnthropicStream(True), head) == []


@pytest.mark.parametrize(
    ("error_type", "status", "cls", "retryable"),
    [
        ("overloaded_error", 502, UpstreamError, True),
        ("api_error", 502, UpstreamError, True),
        ("rate_limit_error", 429, RateLimited, True),
        ("invalid_request_error", 400, UpstreamStatusError, False),
        ("authentication_error", 502, UpstreamError, False),
    ],
)
def test_anthropic_stream_error_event(error_type: str, status: int, cls: type[GatewayError], retryable: bool) -> None:
    event = f'event: error\ndata: {{"type": "error", "error": {{"type": "{error_type}", "message": "Overloaded"}}}}\n\n'.encode()
    with pytest.raises(GatewayError) as info:
        feed_bytewise(AnthropicStream(False), ANTHROPIC_STREAM.split(b"event: content_block_start")[0] + event)
    assert isinstance(info.value, cls) and info.value.status == status and info.value.retryable is retryable


def test_anthropic_stream_ignores_unknown_events_and_deltas() -> None:
    extra = (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"future_block","x":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"future_delta","x":"hm"}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"x"}}\n\n'
        b'event: brand_new_event\ndata: {"type":"brand_new_event"}\n\n'
    )
    assert feed_bytewise(AnthropicStream(True), extra) == []


# ---- errors, shared by every wire format -------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "client_status", "retryable"),
    [
        (400, b'{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too big"}}', 400, False),
        (401, b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}', 502, False),
        (403, b'{"type":"error","error":{"type":"permission_error","message":"no"}}', 502, False),
        (404, b'{"type":"error","error":{"type":"not_found_error","message":"model: claude-9"}}', 404, False),
        (413, b'{"type":"error","error":{"type":"request_too_large","message":"Request too large"}}', 413, False),
        (429, b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}', 429, True),
        (500, b'{"type":"error","error":{"type":"api_error","message":"oops"}}', 502, True),
        (529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', 502, True),
        (400, b'{"error":{"code":400,"message":"Invalid value at contents","status":"INVALID_ARGUMENT"}}', 400, False),
        (503, b'[{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}]', 502, True),
    ],
)
def test_provider_errors_map_to_openai_errors(status: int, body: bytes, client_status: int, retryable: bool) -> None:
    wire = AnthropicWire() if b'"type":"error"' in body else GeminiWire()
    message = wire.error_message(body)
    assert message is not None
    error = provider_error("p", status, message, "7")
    assert error.status == client_status and error.retryable is retryable
    shaped = error.body()["error"]
    assert isinstance(shaped, dict)
    assert set(shaped) == {"message", "type", "param", "code"}
    if client_status in (400, 404, 413):
        assert shaped["message"] == message  # the provider's own words reach the client
    if status == 429:
        assert error.headers() == {"retry-after": "7"}


# ---- Gemini ------------------------------------------------------------------------------------


def test_gemini_request_maps_a_whole_conversation() -> None:
    body = {
        "model": "gem",
        "messages": CONVERSATION,
        "tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stop": ["END", "STOP"],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 64,
        "seed": 7,
        "user": "dropped",
    }
    sent = upstream_json(GeminiWire(), body, model="gemini-2.5-flash")
    assert sent == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "What is in this image, and the weather?"},
                    {"inlineData": {"mimeType": "image/png", "data": PNG}},
                    {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png"}},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "Checking."},
                    {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
                    {"functionCall": {"name": "get_time", "args": {}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                    {"functionResponse": {"name": "get_time", "response": {"output": "noon"}}},
                    {"text": "Thanks"},
                ],
            },
        ],
        "systemInstruction": {"parts": [{"text": "You are terse."}, {"text": "Use celsius."}]},
        "generationConfig": {"temperature": 0.3, "topP": 0.9, "seed": 7, "maxOutputTokens": 64, "stopSequences": ["END", "STOP"]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Get the current weather in a given location",
                        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
                    },
                    {"name": "get_time"},
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
    }


def test_gemini_urls_and_headers() -> None:
    wire = GeminiWire()
    d = deployment(wire, "gemini-2.0-flash", "https://generativelanguage.googleapis.com")
    root = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash"
    message = {"messages": [{"role": "user", "content": "hi"}]}
    assert wire.request(Operation.CHAT, message, d).url == root + ":generateContent"
    assert wire.request(Operation.CHAT, {**message, "stream": True}, d).url == root + ":streamGenerateContent?alt=sse"
    assert wire.request(Operation.EMBEDDINGS, {"input": "x"}, d).url == root + ":batchEmbedContents"
    assert d.headers["x-goog-api-key"] == "secret-key" and "authorization" not in d.headers
    with pytest.raises(BadRequest):
        wire.request(Operation.COMPLETION, {"prompt": "x"}, d)


@pytest.mark.parametrize(
    ("extra", "config"),
    [
        ({"response_format": {"type": "json_object"}}, {"responseMimeType": "application/json"}),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "additionalProperties": False}},
                }
            },
            {"responseMimeType": "application/json", "responseSchema": {"type": "object"}},
        ),
        (
            {"n": 2, "presence_penalty": 0.5, "frequency_penalty": 0.1},
            {"candidateCount": 2, "presencePenalty": 0.5, "frequencyPenalty": 0.1},
        ),
        ({"tool_choice": "none"}, None),
    ],
)
def test_gemini_generation_config(extra: dict[str, Any], config: dict[str, Any] | None) -> None:
    sent = upstream_json(GeminiWire(), {"messages": [{"role": "user", "content": "hi"}], **extra})
    assert sent.get("generationConfig") == config


def test_gemini_embed_request() -> None:
    sent = upstream_json(GeminiWire(), {"input": ["a", "b"], "dimensions": 4}, Operation.EMBEDDINGS, "text-embedding-004")
    assert sent == {
        "requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 4},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 4},
        ]
    }
    with pytest.raises(BadRequest):
        upstream_json(GeminiWire(), {"input": [1, 2, 3]}, Operation.EMBEDDINGS)


# From the generateContent reference: one candidate, usage with thoughts and cached content.
GEMINI_RESPONSE = b"""{
  "candidates": [
    {
      "content": {"parts": [{"text": "thinking...", "thought": true}, {"text": "Hello! How can I help?"}], "role": "model"},
      "finishReason": "STOP",
      "avgLogprobs": -0.0714,
      "index": 0
    }
  ],
  "usageMetadata": {
    "promptTokenCount": 8, "candidatesTokenCount": 7, "totalTokenCount": 40, "cachedContentTokenCount": 4, "thoughtsTokenCount": 25,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}]
  },
  "modelVersion": "gemini-2.5-flash",
  "responseId": "mAitaLmkHPPlz7IPvtfUqQ4"
}"""


def test_gemini_reply() -> None:
    reply = GeminiWire().reply(Operation.CHAT, GEMINI_RESPONSE)
    assert reply.data["id"] == "mAitaLmkHPPlz7IPvtfUqQ4" and reply.data["model"] == "gemini-2.5-flash"
    assert reply.data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help?", "reasoning_content": "thinking..."},  # the thought part
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert reply.data["usage"] == {
        "prompt_tokens": 8,
        "completion_tokens": 32,  # thinking is billed as output
        "total_tokens": 40,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_gemini_reply_function_call() -> None:
    raw = b"""{"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
      {"functionCall": {"name": "get_time", "args": {}}}], "role": "model"}, "finishReason": "STOP", "index": 0}],
      "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 10, "totalTokenCount": 40}, "modelVersion": "gemini-2.0-flash"}"""
    reply = GeminiWire().reply(Operation.CHAT, raw)
    message = reply.data["choices"][0]["message"]
    assert reply.finish_reason == "tool_calls" and message["content"] is None
    assert message["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}},
        {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert reply.data["id"].startswith("chatcmpl-")


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("SAFETY", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("RECITATION", "content_filter"), ("MAX_TOKENS", "length"),
     ("OTHER", "stop")],
)  # fmt: skip
def test_gemini_finish_reasons(reason: str, finish: str) -> None:
    raw = orjson.dumps(
        {"candidates": [{"finishReason": reason, "index": 0, "safetyRatings": []}], "usageMetadata": {"promptTokenCount": 3}}
    )
    reply = GeminiWire().reply(Operation.CHAT, raw)
    assert reply.finish_reason == finish
    assert reply.data["choices"][0]["message"]["content"] == ""


def test_gemini_blocked_prompt_is_a_content_filter_answer() -> None:
    raw = b'{"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []}, "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}}'
    reply = GeminiWire().reply(Operation.CHAT, raw)
    assert reply.finish_reason == "content_filter" and reply.usage is not None and reply.usage.prompt_tokens == 9


def test_gemini_garbage() -> None:
    with pytest.raises(UpstreamError):
        GeminiWire().reply(Operation.CHAT, b'{"something": "else"}')
    with pytest.raises(UpstreamError):
        GeminiWire().reply(Operation.EMBEDDINGS, b'{"embeddings": [{"value": []}]}')


# streamGenerateContent?alt=sse: Google ends events with CRLF CRLF.
GEMINI_STREAM = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "The quick"}],"role": "model"},"index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 6,"totalTokenCount": 6},"modelVersion": "gemini-2.0-flash","responseId": "r-1"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"text": " brown fox"}],"role": "model"},"index": 0}],'
    b'"usageMetadata": {"promptTokenCount": 6,"totalTokenCount": 6},"modelVersion": "gemini-2.0-flash","responseId": "r-1"}\r\n\r\n'
    b'data: {"candidates": [{"content": {"parts": [{"functionCall": {"name": "jump", "args": {"over": "dog"}}}],"role": "model"},'
    b'"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 6,"candidatesTokenCount": 9,"totalTokenCount": 15},'
    b'"modelVersion": "gemini-2.0-flash","responseId": "r-1"}\r\n\r\n'
)


@pytest.mark.parametrize("include_usage", [True, False])
def test_gemini_stream_bytewise(include_usage: bool) -> None:
    translator = GeminiWire().stream(Operation.CHAT, include_usage)
    chunks = chunks_of(feed_bytewise(translator, GEMINI_STREAM))
    text, calls, finish = reassemble(chunks)
    assert text == "The quick brown fox"
    assert calls == {0: {"id": "call_0", "name": "jump", "arguments": '{"over":"dog"}'}}
    assert finish == "tool_calls"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "The quick"}
    assert {c["id"] for c in chunks} == {"r-1"} and {c["model"] for c in chunks} == {"gemini-2.0-flash"}
    usage = {"prompt_tokens": 6, "completion_tokens": 9, "total_tokens": 15}
    assert [c["usage"] for c in chunks if "usage" in c] == ([usage] if include_usage else [])
    assert translator.state.finish_reason == "tool_calls" and translator.state.usage is not None


def test_gemini_stream_safety_block_and_error() -> None:
    blocked = b'data: {"candidates": [{"finishReason": "SAFETY","index": 0,"safetyRatings": []}],"usageMetadata": {"promptTokenCount": 4}}\r\n\r\n'
    chunks = chunks_of(feed_bytewise(GeminiStream(True), blocked))
    assert reassemble(chunks)[2] == "content_filter"
    assert chunks[-1]["usage"]["prompt_tokens"] == 4
    prompt_blocked = b'data: {"promptFeedback": {"blockReason": "OTHER"}}\r\n\r\n'
    assert reassemble(chunks_of(feed_bytewise(GeminiStream(False), prompt_blocked)))[2] == "content_filter"
    error = b'data: {"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}\r\n\r\n'
    with pytest.raises(RateLimited):
        feed_bytewise(GeminiStream(False), error)


def test_gemini_embeddings_reply_and_client_encoding() -> None:
    reply = GeminiWire().reply(Operation.EMBEDDINGS, b'{"embeddings": [{"values": [0.5, -1.0]}, {"values": [0.25, 2.0]}]}')
    assert reply.usage is None  # Gemini reports none: the gateway counts it
    data = reply.data
    finish_embeddings(data, "text-embedding-004", "base64")
    assert data["model"] == "text-embedding-004" and [d["index"] for d in data["data"]] == [0, 1]
    assert struct.unpack("<2f", base64.b64decode(data["data"][1]["embedding"])) == (0.25, 2.0)
    floats = GeminiWire().reply(Operation.EMBEDDINGS, b'{"embeddings": [{"values": [0.5]}]}').data
    finish_embeddings(floats, "m", None)
    assert floats["data"][0]["embedding"] == [0.5]


# ---- Azure -------------------------------------------------------------------------------------


def test_azure_request() -> None:
    wire = AzureWire("2024-06-01")
    d = deployment(wire, "my-gpt4o", "https://res.openai.azure.com")
    request = wire.request(Operation.CHAT, {"model": "x", "messages": [], "stream": True}, d)
    assert request.url == "https://res.openai.azure.com/openai/deployments/my-gpt4o/chat/completions?api-version=2024-06-01"
    assert request.headers["api-key"] == "secret-key" and "authorization" not in request.headers
    assert json.loads(request.body)["stream_options"] == {"include_usage": True}
    embeddings = wire.request(Operation.EMBEDDINGS, {"input": "x"}, d)
    assert embeddings.url == "https://res.openai.azure.com/openai/deployments/my-gpt4o/embeddings?api-version=2024-06-01"
    assert AzureWire().api_version == "2024-10-21"


def test_azure_stream_drops_the_prompt_filter_chunk() -> None:
    stream = (
        b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,'
        b'"content_filter_results":{"hate":{"filtered":false,"severity":"safe"}}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"Hi","role":"assistant"},"finish_reason":null,"index":0}],"created":1,"id":"chatcmpl-1",'
        b'"model":"gpt-4o","object":"chat.completion.chunk"}\n\n'
        b'data: {"choices":[{"delta":{},"finish_reason":"stop","index":0}],"created":1,"id":"chatcmpl-1","model":"gpt-4o",'
        b'"object":"chat.completion.chunk"}\n\n'
        b"data: [DONE]\n\n"
    )
    translator = AzureStream(False)
    chunks = chunks_of(feed_bytewise(translator, stream))
    assert [c["id"] for c in chunks] == ["chatcmpl-1", "chatcmpl-1"]
    assert reassemble(chunks)[0] == "Hi" and translator.state.done and translator.state.response_id == "chatcmpl-1"

"""Claude behind the OpenAI API: the official `openai` SDK -> the gateway (a real process) -> a fake
Anthropic speaking the Messages API on a real socket, with events split across TCP writes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionToolParam

from tests.conftest import GatewayProcess
from tests.fakes.anthropic_upstream import TOOL_INPUT, TOOL_PREAMBLE, TOOL_USE_ID, Behavior, FakeAnthropic
from tests.provider_support import Provider, provider_fixtures

KEY = "sk-ant-api03-test-0123456789abcdefghij"
HAIKU = "claude-3-5-haiku-20241022"  # bundled price: 0.80 in, 4.00 out, 0.08 cache read, 1.00 cache write
WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BAAAMBAQAY3Y2wAAAAAElFTkSuQmCC"


MODELS = f"""
[models."claude-haiku"]
targets = [{{ provider = "claude", model = "{HAIKU}" }}]
retries = 0        # each test sees every upstream failure as it is
eject_after = 1000

[models."claude-retrying"]
targets = [{{ provider = "claude", model = "{HAIKU}" }}]
retries = 1
eject_after = 1000

[models."claude-priced"]
targets = [{{ provider = "claude", model = "{HAIKU}", price = {{ input_per_million = 1.0, output_per_million = 2.0 }} }}]

[models."claude-custom"]
targets = [{{ provider = "claude", model = "my-claude-finetune" }}]
"""


server, gateway, claude, client = provider_fixtures(FakeAnthropic, Provider("claude", "anthropic", KEY, MODELS))


def cost(prompt: int, completion: int, cached: int = 0, written: int = 0) -> float:
    return ((prompt - cached - written) * 0.80 + cached * 0.08 + written * 1.00 + completion * 4.00) / 1e6


def test_plain_chat(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="claude-haiku",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        stop=["END"],
        temperature=0.2,
        user="user-7",
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.id.startswith("msg_fake_") and answer.model == HAIKU
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (4, 3, 7)
    assert raw.headers["x-gateway-target"] == f"claude/{HAIKU}"
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(cost(4, 3), abs=1e-12)
    assert answer.usage.model_extra == {"cost_usd": pytest.approx(cost(4, 3), abs=1e-12)}

    sent = claude.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": HAIKU,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        "system": [{"type": "text", "text": "be brief"}],
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-7"},
    }


def test_cache_tokens_are_reported_and_priced(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.script(Behavior(cache_read=1000, cache_creation=200))
    raw = client.chat.completions.with_raw_response.create(
        model="claude-haiku", messages=[{"role": "user", "content": "hi you"}], max_tokens=50
    )
    usage = raw.parse().usage
    assert usage is not None and usage.prompt_tokens == 2 + 1000 + 200 and usage.completion_tokens == 3
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 1000
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(cost(1202, 3, cached=1000, written=200), abs=1e-12)
    assert claude.requests[0].json["max_tokens"] == 50


def test_configured_price_wins_and_unknown_models_are_unpriced(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    priced = client.chat.completions.with_raw_response.create(model="claude-priced", messages=[{"role": "user", "content": "hello there"}])
    assert float(priced.headers["x-gateway-cost-usd"]) == pytest.approx((2 * 1.0 + 3 * 2.0) / 1e6, abs=1e-12)
    unpriced = client.chat.completions.with_raw_response.create(model="claude-custom", messages=[{"role": "user", "content": "hello"}])
    assert "x-gateway-cost-usd" not in unpriced.headers
    usage = unpriced.parse().usage
    assert usage is not None and usage.total_tokens == 3 and "cost_usd" not in (usage.model_extra or {})


def test_streamed_chat_split_across_tcp_reads(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.script(Behavior(split_events=True, chunks=6))
    text = "the quick brown fox jumps over the lazy dog"
    chunks = list(
        client.chat.completions.create(
            model="claude-haiku", messages=[{"role": "user", "content": text}], stream=True, stream_options={"include_usage": True}
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "echo: " + text and len(pieces) == 6
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 10)
    assert (chunks[-1].usage.model_extra or {})["cost_usd"] == pytest.approx(cost(9, 10), abs=1e-12)  # the bundled Haiku price
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("msg_fake_")
    assert claude.requests[0].json["stream"] is True


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    chunks = list(client.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "a b"}], stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_tool_call_streamed_in_pieces(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.script(Behavior(split_events=True, chunks=5))
    stream = client.chat.completions.create(
        model="claude-haiku",
        messages=[{"role": "user", "content": "CALL_TOOL for Paris"}],
        tools=[WEATHER],
        tool_choice="auto",
        stream=True,
    )
    text, name, call_id, arguments, finish = "", "", "", [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for call in delta.tool_calls or []:
            assert call.index == 0
            call_id += call.id or ""
            if call.function is not None:
                name += call.function.name or ""
                if call.function.arguments:
                    arguments.append(call.function.arguments)
        finish = chunk.choices[0].finish_reason or finish
    assert text == TOOL_PREAMBLE
    assert (call_id, name, finish) == (TOOL_USE_ID, "get_weather", "tool_calls")
    assert len(arguments) == 5 and json.loads("".join(arguments)) == TOOL_INPUT
    sent = claude.requests[0].json
    assert sent["tools"] == [
        {"name": "get_weather", "input_schema": WEATHER["function"].get("parameters"), "description": "Current weather for a city"}
    ]
    assert sent["tool_choice"] == {"type": "auto"}


def test_tool_call_and_result_round_trip(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    first = client.chat.completions.create(
        model="claude-haiku",
        messages=[{"role": "user", "content": "CALL_TOOL please"}],
        tools=[WEATHER],
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.content == TOOL_PREAMBLE
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.type == "function" and json.loads(call.function.arguments) == TOOL_INPUT
    history: list[Any] = [
        {"role": "user", "content": "CALL_TOOL please"},
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "21 degrees"},
        {"role": "user", "content": "and tomorrow?"},
    ]
    second = client.chat.completions.create(model="claude-haiku", messages=history, tools=[WEATHER])
    assert second.choices[0].message.content == "echo: and tomorrow?"
    turns = claude.requests[1].json["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][1] == {"type": "tool_use", "id": TOOL_USE_ID, "name": "get_weather", "input": TOOL_INPUT}
    assert turns[2]["content"] == [
        {"type": "tool_result", "tool_use_id": TOOL_USE_ID, "content": "21 degrees"},
        {"type": "text", "text": "and tomorrow?"},
    ]


def test_image_parts(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    answer = client.chat.completions.create(
        model="claude-haiku",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what are these"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}},
                ],
            }
        ],
    )
    assert answer.choices[0].message.content == "echo: what are these"
    assert claude.requests[0].json["messages"][0]["content"] == [
        {"type": "text", "text": "what are these"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_invalid_request_passes_through_as_400(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.script(Behavior(status=400, message="max_tokens: 100000 > 8192, which is the maximum allowed number of output tokens"))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "hi"}], max_tokens=100000)
    assert info.value.status_code == 400
    assert info.value.body == {
        "message": "max_tokens: 100000 > 8192, which is the maximum allowed number of output tokens",
        "type": "invalid_request_error",
        "param": None,
        "code": "upstream_invalid_request",
    }


def test_overloaded_upstream_is_502(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.script(Behavior(status=529))
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "upstream_error"
    assert "Overloaded" in info.value.body["message"]


def test_overload_is_retried_but_invalid_requests_are_not(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.script(Behavior(status=529))
    answer = client.chat.completions.create(model="claude-retrying", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "echo: hi" and len(claude.requests) == 2
    claude.script(Behavior(error_event="overloaded_error", error_after=1))  # before the first byte: still retryable
    streamed = client.chat.completions.create(model="claude-retrying", messages=[{"role": "user", "content": "yo"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "echo: yo" and len(claude.requests) == 4
    claude.script(Behavior(status=400))
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="claude-retrying", messages=[{"role": "user", "content": "hi"}])
    assert len(claude.requests) == 5


def test_overloaded_event_before_content_is_an_http_502(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.script(Behavior(error_event="overloaded_error", error_after=1, split_events=True))
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert info.value.status_code == 502


def test_error_event_mid_stream_ends_with_an_sse_error(gateway: GatewayProcess, claude: FakeAnthropic) -> None:
    claude.script(Behavior(error_event="overloaded_error", error_after=5, chunks=6, chunk_delay_s=0.05))
    body = {"model": "claude-haiku", "messages": [{"role": "user", "content": "one two three four"}], "stream": True}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, timeout=20) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert b"data: [DONE]" not in [line.encode() for line in lines]
    assert lines[-2] == "event: error"
    assert json.loads(lines[-1].removeprefix("data: "))["error"]["type"] == "upstream_error"
    contents = [json.loads(line[6:])["choices"][0]["delta"].get("content") for line in lines[:-2]]
    assert "".join(c for c in contents if c)  # content was relayed before the error


def test_rate_limited_is_429_with_retry_after(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.script(Behavior(status=429, headers={"retry-after": "17"}))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.headers["retry-after"] == "17"


def test_rejected_credentials_are_the_gateways_problem(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.script(Behavior(status=401, message=f"invalid x-api-key {KEY}"))
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 502 and KEY not in info.value.response.text


def test_text_completions_and_embeddings_are_refused(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="claude-haiku", prompt="once upon a time")
    assert "text_completion" in info.value.message
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="claude-haiku", input="x")
    assert claude.requests == []


def test_the_fake_splits_every_event_across_reads(claude: FakeAnthropic) -> None:
    """What the streaming tests rely on: with split_events, no event arrives in one piece."""
    claude.script(Behavior(split_events=True, chunks=2))
    body = {"model": HAIKU, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    with httpx.stream("POST", claude.base_url + "/v1/messages", json=body, headers=headers, timeout=10) as response:
        reads = [piece for piece in response.iter_raw() if piece]
    events = b"".join(reads).count(b"\n\n")
    assert events == 8 and len(reads) > 3 * events  # start, block start, ping, 2 deltas, block stop, delta, stop


def test_thinking_from_reasoning_effort_comes_back_as_reasoning_content(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.script(Behavior(), Behavior(redacted_thinking=True))
    answer = client.chat.completions.create(model="claude-haiku", messages=[{"role": "user", "content": "why"}], reasoning_effort="low")
    sent = claude.requests[0].json
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024} and sent["max_tokens"] == 1024 + 4096
    message = answer.choices[0].message
    assert message.content == "echo: why"
    assert message.model_extra is not None and message.model_extra["reasoning_content"] == "Thinking about: why"
    (block,) = message.model_extra["thinking_blocks"]
    assert block == {"type": "thinking", "thinking": "Thinking about: why", "signature": block["signature"]} and block["signature"]
    thinking = {"type": "enabled", "budget_tokens": 2000}  # given as it is, with the client's max_tokens
    redacted = client.chat.completions.create(
        model="claude-haiku", messages=[{"role": "user", "content": "why"}], max_tokens=3000, extra_body={"thinking": thinking}
    )
    assert claude.requests[1].json["thinking"] == thinking and claude.requests[1].json["max_tokens"] == 3000
    blocks = (redacted.choices[0].message.model_extra or {})["thinking_blocks"]
    assert [b["type"] for b in blocks] == ["thinking", "redacted_thinking"] and blocks[1]["data"]


def test_thinking_requests_anthropic_would_refuse_are_400_here(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    with pytest.raises(openai.BadRequestError, match="greater than the thinking budget"):
        client.chat.completions.create(
            model="claude-haiku", messages=[{"role": "user", "content": "x"}], reasoning_effort="high", max_tokens=4096
        )
    with pytest.raises(openai.BadRequestError, match="reasoning_effort must be one of"):
        client.chat.completions.create(
            model="claude-haiku", messages=[{"role": "user", "content": "x"}], extra_body={"reasoning_effort": "max"}
        )
    assert claude.requests == []


def test_streamed_thinking_is_reasoning_content_then_one_signed_block(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    claude.script(Behavior(split_events=True, chunks=4))
    stream = client.chat.completions.create(
        model="claude-haiku", messages=[{"role": "user", "content": "think it over"}], reasoning_effort="medium", stream=True
    )
    reasoning, text, blocks = [], "", []
    for chunk in stream:
        extra = chunk.choices[0].delta.model_extra or {} if chunk.choices else {}
        if extra.get("reasoning_content"):
            assert not text  # the thinking comes first
            reasoning.append(extra["reasoning_content"])
        blocks += extra.get("thinking_blocks") or []
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert len(reasoning) == 4 and "".join(reasoning) == "Thinking about: think it over"
    assert blocks == [{"type": "thinking", "thinking": "Thinking about: think it over", "signature": blocks[0]["signature"]}]
    assert blocks[0]["signature"].startswith("sig-")
    assert text == "echo: think it over" and claude.requests[0].json["thinking"]["budget_tokens"] == 2048


def test_thinking_blocks_go_back_first_in_a_tool_use_turn(client: openai.OpenAI, claude: FakeAnthropic) -> None:
    ask: dict[str, Any] = {"model": "claude-haiku", "tools": [WEATHER], "reasoning_effort": "low"}
    first = client.chat.completions.create(messages=[{"role": "user", "content": "CALL_TOOL please"}], **ask)
    message = first.choices[0].message
    assert message.tool_calls is not None and (message.model_extra or {})["thinking_blocks"]
    history: list[Any] = [
        {"role": "user", "content": "CALL_TOOL please"},
        message.model_dump(exclude_none=True),  # reasoning_content and thinking_blocks included, as a client keeps them
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "21 degrees"},
    ]
    second = client.chat.completions.create(messages=history, **ask)
    assert second.choices[0].finish_reason == "stop"  # Anthropic took the turn back
    turn = claude.requests[1].json["messages"][1]["content"]
    assert turn[0] == (message.model_extra or {})["thinking_blocks"][0]  # as Anthropic signed it
    assert turn[0]["thinking"] == "Thinking about: CALL_TOOL please"
    assert [b["type"] for b in turn] == ["thinking", "text", "tool_use"]
    without = [history[0], {k: v for k, v in history[1].items() if k != "thinking_blocks"}, history[2]]
    with pytest.raises(openai.BadRequestError, match="must start with a thinking block"):  # Anthropic's own answer, relayed
        client.chat.completions.create(messages=without, **ask)

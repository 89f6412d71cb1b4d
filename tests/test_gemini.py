"""Gemini behind the OpenAI API: the official `openai` SDK -> the gateway (a real process) -> a fake
Gemini API on a real socket (generateContent, streamGenerateContent?alt=sse, batchEmbedContents)."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionToolParam

from tests.fakes.gemini_upstream import TOOL_ARGS, Behavior, FakeGemini
from tests.fakes.openai_upstream import expected_embedding
from tests.provider_support import Provider, provider_fixtures

KEY = "AIzaSyTest-0123456789abcdefghijklmno"
FLASH = "gemini-2.0-flash"  # bundled price: 0.10 in, 0.40 out, 0.025 cached
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BAAAMBAQAY3Y2wAAAAAElFTkSuQmCC"
FORECAST: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "forecast",
        "description": "Weather forecast",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


MODELS = f"""
[models."gemini-flash"]
targets = [{{ provider = "google", model = "{FLASH}" }}]
retries = 0        # each test sees every upstream failure as it is
eject_after = 1000

[models."gemini-embed"]
targets = [{{ provider = "google", model = "gemini-embedding-001" }}]
"""


server, gateway, gemini, client = provider_fixtures(FakeGemini, Provider("google", "gemini", KEY, MODELS))


def test_plain_chat(client: openai.OpenAI, gemini: FakeGemini) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-flash",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
        max_tokens=100,
        temperature=0.5,
        top_p=0.8,
        stop="END",
        seed=3,
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.id.startswith("resp-fake-") and answer.model == FLASH
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 3)
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx((4 * 0.10 + 3 * 0.40) / 1e6, abs=1e-12)
    assert "x-gateway-usage" not in raw.headers  # exact, from usageMetadata

    sent = gemini.requests[0]
    assert sent.path == f"/v1beta/models/{FLASH}:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY and "authorization" not in sent.headers and "key" not in sent.query
    assert sent.json == {
        "contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"temperature": 0.5, "topP": 0.8, "seed": 3, "maxOutputTokens": 100, "stopSequences": ["END"]},
    }


def test_thoughts_and_cached_tokens(client: openai.OpenAI, gemini: FakeGemini) -> None:
    gemini.script(Behavior(thoughts=20, cached=2))
    raw = client.chat.completions.with_raw_response.create(model="gemini-flash", messages=[{"role": "user", "content": "a b c"}])
    usage = raw.parse().usage
    assert usage is not None and usage.completion_tokens == 4 + 20
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 2
    expected = (1 * 0.10 + 2 * 0.025 + 24 * 0.40) / 1e6
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected, abs=1e-12)


def test_streamed_chat_split_across_tcp_reads(client: openai.OpenAI, gemini: FakeGemini) -> None:
    gemini.script(Behavior(split_events=True, chunks=5))
    text = "pack my box with five dozen liquor jugs"
    chunks = list(
        client.chat.completions.create(
            model="gemini-flash", messages=[{"role": "user", "content": text}], stream=True, stream_options={"include_usage": True}
        )
    )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "echo: " + text and len(pieces) == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (8, 9)
    sent = gemini.requests[0]
    assert sent.path == f"/v1beta/models/{FLASH}:streamGenerateContent" and sent.query == {"alt": "sse"}


def test_tool_call_streamed(client: openai.OpenAI, gemini: FakeGemini) -> None:
    gemini.script(Behavior(split_events=True))
    stream = client.chat.completions.create(
        model="gemini-flash",
        messages=[{"role": "user", "content": "CALL_TOOL for Paris"}],
        tools=[FORECAST],
        tool_choice="required",
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += call.id or ""
            slot["name"] += (call.function.name or "") if call.function else ""
            slot["arguments"] += (call.function.arguments or "") if call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0] and calls[0]["name"] == "forecast" and calls[0]["id"]
    assert json.loads(calls[0]["arguments"]) == TOOL_ARGS
    sent = gemini.requests[0].json
    assert sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "forecast",
                    "description": "Weather forecast",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                        "required": ["city"],
                    },
                }
            ]
        }
    ]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


def test_tool_result_round_trip(client: openai.OpenAI, gemini: FakeGemini) -> None:
    first = client.chat.completions.create(
        model="gemini-flash",
        messages=[{"role": "user", "content": "CALL_TOOL please"}],
        tools=[FORECAST],
    )
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls" and message.tool_calls is not None
    call = message.tool_calls[0]
    history: list[Any] = [
        {"role": "user", "content": "CALL_TOOL please"},
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"high": 24}'},
        {"role": "user", "content": "thanks"},
    ]
    second = client.chat.completions.create(model="gemini-flash", messages=history, tools=[FORECAST])
    assert second.choices[0].message.content == "echo: thanks"
    contents = gemini.requests[1].json["contents"]
    assert contents[1] == {"role": "model", "parts": [{"functionCall": {"name": "forecast", "args": TOOL_ARGS}}]}
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "forecast", "response": {"high": 24}}}, {"text": "thanks"}],
    }


def test_image_part(client: openai.OpenAI, gemini: FakeGemini) -> None:
    answer = client.chat.completions.create(
        model="gemini-flash",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                ],
            }
        ],
    )
    assert answer.choices[0].message.content == "echo: describe"
    assert gemini.requests[0].json["contents"][0]["parts"] == [{"text": "describe"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}]


def test_safety_blocks_are_content_filter(client: openai.OpenAI, gemini: FakeGemini) -> None:
    gemini.script(Behavior(finish_reason="SAFETY"), Behavior(prompt_blocked=True), Behavior(finish_reason="SAFETY"))
    blocked_answer = client.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "something bad"}])
    assert blocked_answer.choices[0].finish_reason == "content_filter" and not blocked_answer.choices[0].message.content
    blocked_prompt = client.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "worse"}])
    assert blocked_prompt.choices[0].finish_reason == "content_filter"
    assert blocked_prompt.usage is not None and blocked_prompt.usage.prompt_tokens == 1
    stream = client.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "bad"}], stream=True)
    assert [c.choices[0].finish_reason for c in stream] == ["content_filter"]


@pytest.mark.parametrize(
    ("status", "client_status", "error"),
    [
        (400, 400, openai.BadRequestError),
        (429, 429, openai.RateLimitError),
        (503, 502, openai.APIStatusError),
        (500, 502, openai.APIStatusError),
    ],
)
def test_errors(client: openai.OpenAI, gemini: FakeGemini, status: int, client_status: int, error: type[openai.APIStatusError]) -> None:
    gemini.script(Behavior(status=status, message="* GenerateContentRequest.contents[0].parts: required"))
    with pytest.raises(error) as info:
        client.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == client_status
    if status == 400:
        assert isinstance(info.value.body, dict) and info.value.body["message"] == "* GenerateContentRequest.contents[0].parts: required"


def test_embeddings(client: openai.OpenAI, gemini: FakeGemini) -> None:
    raw = client.embeddings.with_raw_response.create(model="gemini-embed", input=["first text", "second"], dimensions=4)
    answer = raw.parse()
    assert [d.embedding for d in answer.data] == [expected_embedding("first text", 4), expected_embedding("second", 4)]
    assert answer.model == "gemini-embedding-001"
    assert raw.headers["x-gateway-usage"] == "estimated"  # Gemini reports no usage for embeddings
    assert answer.usage.prompt_tokens == 3  # the gateway's estimate: "first text" 2 + "second" 1 (tiktoken o200k)
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(answer.usage.prompt_tokens * 0.15 / 1e6, abs=1e-12)
    sent = gemini.requests[0]
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent.json["requests"][1] == {
        "model": "models/gemini-embedding-001",
        "content": {"parts": [{"text": "second"}]},
        "outputDimensionality": 4,
    }


def test_embeddings_in_base64_when_asked(client: openai.OpenAI, gemini: FakeGemini) -> None:
    answer = client.embeddings.create(model="gemini-embed", input="hello", encoding_format="base64")
    encoded = answer.data[0].embedding
    assert isinstance(encoded, str)
    assert list(struct.unpack("<8f", base64.b64decode(encoded))) == expected_embedding("hello")


def test_the_fake_splits_every_event_across_reads(gemini: FakeGemini) -> None:
    """What the streaming tests rely on: with split_events, no event arrives in one piece."""
    gemini.script(Behavior(split_events=True, chunks=3))
    url = f"{gemini.base_url}/v1beta/models/{FLASH}:streamGenerateContent?alt=sse"
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    with httpx.stream("POST", url, json=body, headers={"x-goog-api-key": KEY}, timeout=10) as response:
        reads = [piece for piece in response.iter_raw() if piece]
    events = b"".join(reads).count(b"\r\n\r\n")
    assert events == 3 and len(reads) > 3 * events


@pytest.mark.parametrize(("delay", "header"), [("37s", "37"), ("1.250s", "2")])
def test_a_rate_limit_says_when_to_retry(client: openai.OpenAI, gemini: FakeGemini, delay: str, header: str) -> None:
    """Gemini puts the wait in the error body (RetryInfo.retryDelay), not in a Retry-After header:
    the gateway's 429 carries it as Retry-After (whole seconds, rounded up)."""
    gemini.script(Behavior(status=429, message="Resource has been exhausted (e.g. check quota).", retry_delay=delay))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == header
    assert "Resource has been exhausted" in info.value.message


def test_reasoning_effort_is_a_thinking_budget_and_thoughts_are_reasoning_content(client: openai.OpenAI, gemini: FakeGemini) -> None:
    answer = client.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "why"}], reasoning_effort="medium")
    assert gemini.requests[0].json["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 8192, "includeThoughts": True}
    message = answer.choices[0].message
    assert message.content == "echo: why" and (message.model_extra or {})["reasoning_content"] == "Thinking about: why"
    assert answer.usage is not None and answer.usage.completion_tokens == 2 + 3  # the thoughts are billed as output
    stream = client.chat.completions.create(
        model="gemini-flash", messages=[{"role": "user", "content": "why not"}], reasoning_effort="low", stream=True
    )
    reasoning, text = "", ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        if (delta.model_extra or {}).get("reasoning_content"):
            assert not text  # thoughts come first
            reasoning += delta.model_extra["reasoning_content"]  # type: ignore[index]
        text += delta.content or ""
    assert (reasoning, text) == ("Thinking about: why not", "echo: why not")
    assert gemini.requests[1].json["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 1024
    off = client.chat.completions.create(model="gemini-flash", messages=[{"role": "user", "content": "x"}], reasoning_effort="none")
    assert gemini.requests[2].json["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}
    assert "reasoning_content" not in (off.choices[0].message.model_extra or {})
    with pytest.raises(openai.BadRequestError, match="reasoning_effort must be one of"):
        client.chat.completions.create(
            model="gemini-flash", messages=[{"role": "user", "content": "x"}], extra_body={"reasoning_effort": "max"}
        )
    assert len(gemini.requests) == 3

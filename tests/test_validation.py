"""The OpenAI request shapes the gateway reads are checked at admission (gateway/pipeline/shape.py):
a wrong type is a 400 naming the field's path, and no body, however odd, reaches a stage that
would fail on it (the trace writer included)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import httpx
import pytest

from tests.conftest import KEYS, GatewayFactory, GatewayProcess
from tests.fakes.openai_upstream import FakeOpenAI
from tests.test_errors import assert_openai_error
from tests.traceutil import client, metrics, traces_config, value, wait_for

USER = [{"role": "user", "content": "hi"}]
CHAT = {"model": "demo-echo", "messages": USER}
CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}

# item 4 of issue 13: each of these was answered 200, and the first two stopped all tracing
ISSUE_BODIES = [
    ({**CHAT, "messages": [{"role": "assistant", "content": "x", "tool_calls": 1}]}, "messages[0].tool_calls"),
    ({**CHAT, "tools": [{"type": "function", "function": "x"}]}, "tools[0].function"),
]

BAD_CHAT = [
    *ISSUE_BODIES,
    ({**CHAT, "messages": "hi"}, "messages"),
    ({**CHAT, "messages": [1]}, "messages[0]"),
    ({**CHAT, "messages": [{"content": "hi"}]}, "messages[0].role"),
    ({**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({**CHAT, "messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    ({**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": ["a"]}]}]}, "messages[0].content[0].text"),
    ({**CHAT, "messages": [{"role": "user", "content": ["a"]}]}, "messages[0].content[0]"),
    (
        {**CHAT, "messages": [*USER, {"role": "assistant", "content": None, "tool_calls": [CALL, {**CALL, "id": 5}]}]},
        "messages[1].tool_calls[1].id",
    ),
    (
        {**CHAT, "messages": [{"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}]}]},
        "messages[0].tool_calls[0].function.arguments",
    ),
    ({**CHAT, "messages": [{"role": "tool", "content": "r", "tool_call_id": 1}]}, "messages[0].tool_call_id"),
    ({**CHAT, "tools": {"type": "function"}}, "tools"),
    ({**CHAT, "tools": [TOOL, {"type": "function", "function": {"name": 1}}]}, "tools[1].function.name"),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({**CHAT, "tool_choice": {"type": "function", "function": "lookup"}}, "tool_choice.function"),
    ({**CHAT, "tool_choice": 3}, "tool_choice"),
    ({**CHAT, "n": 0}, "n"),
    ({**CHAT, "n": "2"}, "n"),
    ({**CHAT, "n": True}, "n"),
    ({**CHAT, "max_tokens": "10"}, "max_tokens"),
    ({**CHAT, "max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({**CHAT, "stop": ["a", 1]}, "stop[1]"),
    ({**CHAT, "stop": 1}, "stop"),
    ({**CHAT, "temperature": "hot"}, "temperature"),
    ({**CHAT, "temperature": False}, "temperature"),
    ({**CHAT, "stream_options": "yes"}, "stream_options"),
    ({**CHAT, "reasoning_effort": ["low"]}, "reasoning_effort"),
]
BAD_OTHER = [
    ("/completions", {"model": "demo-echo", "prompt": [1, "a"]}, "prompt"),
    ("/completions", {"model": "demo-echo", "prompt": [[1, 2], ["x"]]}, "prompt[1]"),
    ("/completions", {"model": "demo-echo", "prompt": {"text": "hi"}}, "prompt"),
    ("/embeddings", {"model": "demo-echo", "input": [{"text": "hi"}]}, "input[0]"),
    ("/embeddings", {"model": "demo-echo", "input": ["a", 2]}, "input"),
    ("/embeddings", {"model": "demo-echo", "input": "a", "dimensions": "8"}, "dimensions"),
]
GOOD = [
    ("/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "n": 1, "stop": ["x"]}),
    (
        "/chat/completions",
        {
            **CHAT,
            "messages": [
                *USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "r"},
            ],
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        },
    ),
    ("/chat/completions", {**CHAT, "temperature": None, "max_tokens": None, "stop": None, "tools": None, "tool_choice": "auto"}),
    ("/completions", {"model": "demo-echo", "prompt": [[1, 2], [3]]}),
    ("/embeddings", {"model": "demo-echo", "input": [[1, 2], [3]]}),
]


def post(gw: GatewayProcess, path: str, body: Any, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else httpx.Request("POST", "http://x", json=body).content
    h = {"authorization": f"Bearer {KEYS['alpha']}", "content-type": "application/json", **headers}
    return httpx.post(gw.base_url + path, content=content, headers=h, timeout=20)


@pytest.mark.parametrize(("body", "param"), BAD_CHAT, ids=[p for _, p in BAD_CHAT])
def test_a_chat_field_of_the_wrong_shape_is_400_naming_its_path(gateway: GatewayProcess, body: dict[str, Any], param: str) -> None:
    error = assert_openai_error(post(gateway, "/chat/completions", body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param in str(error["message"])


@pytest.mark.parametrize(("path", "body", "param"), BAD_OTHER, ids=[f"{p}-{q}" for p, _, q in BAD_OTHER])
def test_prompt_and_input_of_the_wrong_shape_are_400(gateway: GatewayProcess, path: str, body: dict[str, Any], param: str) -> None:
    assert assert_openai_error(post(gateway, path, body), 400)["param"] == param


@pytest.mark.parametrize(("path", "body"), GOOD, ids=range(len(GOOD)))
def test_every_shape_openai_allows_still_passes(gateway: GatewayProcess, path: str, body: dict[str, Any]) -> None:
    assert post(gateway, path, body).status_code == 200


def _nested(depth: int) -> bytes:
    return (
        b'{"model": "demo-echo", "messages": [{"role": "user", "content": "hi"}], "metadata": '
        + b"[" * (depth - 1)
        + b"]" * (depth - 1)
        + b"}"
    )


def test_bodies_nested_past_the_bound_are_400(gateway: GatewayProcess) -> None:
    assert post(gateway, "/chat/completions", _nested(64)).status_code == 200  # 64 levels, the body's own included
    for depth in (65, 300, 5000):  # past what orjson writes (255), and past what it reads (1024)
        error = assert_openai_error(post(gateway, "/chat/completions", _nested(depth)), 400, "invalid_json")
        assert "nested" in str(error["message"]) or "depth limit" in str(error["message"])


def _rows(gw: GatewayProcess) -> dict[str, int]:
    try:
        with sqlite3.connect(gw.directory / "traces.db") as conn:
            return dict(conn.execute("SELECT request_id, status FROM traces").fetchall())
    except sqlite3.OperationalError:  # the writer has not created the table yet
        return {}


@pytest.mark.parametrize("mode", ["metadata", "full"])
def test_malformed_requests_are_400_and_tracing_goes_on(gateway_factory: GatewayFactory, fake: FakeOpenAI, mode: str) -> None:
    """Issue 13, item 4: with capture on, `"tool_calls": 1` or a tool whose function is a string was
    answered 200 and killed the trace writer's store thread; every later record was lost."""
    gw = gateway_factory(traces_config(fake.base_url, telemetry=f'capture_content = "{mode}"'))
    sdk = client(gw)
    before = [f"before-{i}" for i in range(5)]
    after = [f"after-{i}" for i in range(5)]
    for rid in before:
        sdk.chat.completions.create(model="demo-echo", messages=USER, extra_headers={"x-request-id": rid})
    for i, (body, param) in enumerate(ISSUE_BODIES):
        assert assert_openai_error(post(gw, "/chat/completions", body, **{"x-request-id": f"bad-{i}"}), 400)["param"] == param
    for rid in after:
        sdk.chat.completions.create(model="demo-echo", messages=USER, extra_headers={"x-request-id": rid})
    expected = {**dict.fromkeys(before + after, 200), "bad-0": 400, "bad-1": 400}
    assert wait_for(lambda: (rows := _rows(gw)) == expected and rows, what="every request's trace row") == expected
    m = metrics(gw)  # every reason of the closed sets is shown, from 0
    for name, reasons in (
        ("gateway_trace_records_dropped_total", ("queue_full", "store_error", "invalid_record")),
        ("gateway_trace_records_degraded_total", ("capture_failed", "unencodable")),
    ):
        assert {reason: value(m, name, reason=reason) for reason in reasons} == dict.fromkeys(reasons, 0.0)


def test_a_deep_body_costs_no_other_request_its_trace_row(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    """Issue 13, item 10: a body nested past the 254 levels orjson writes was answered, and its record
    failed the trace sink's whole batch: every record of that window (any tenant's) was lost, uncounted."""
    gw = gateway_factory(traces_config(fake.base_url, telemetry='capture_content = "metadata"'))
    good = {"model": "demo-echo", "messages": USER}

    async def burst() -> list[int]:  # together, so they share the sink's 50 ms batch
        async with httpx.AsyncClient(base_url=gw.base_url, headers={"authorization": f"Bearer {KEYS['alpha']}"}, timeout=20) as http:
            sends = [http.post("/chat/completions", json=good, headers={"x-request-id": f"good-{i}"}) for i in range(10)]
            sends.insert(5, http.post("/chat/completions", content=_nested(300), headers={"x-request-id": "deep"}))
            return [r.status_code for r in await asyncio.gather(*sends)]

    statuses = asyncio.run(burst())
    ids = {f"good-{i}" for i in range(10)} | {"deep"}

    def all_rows() -> dict[str, int] | None:
        rows = _rows(gw)
        return rows if set(rows) == ids else None

    rows = wait_for(all_rows, what="every request's trace row")
    assert statuses == [200] * 5 + [400] + [200] * 5
    assert rows == {**dict.fromkeys(ids, 200), "deep": 400}

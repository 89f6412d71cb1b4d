"""The OpenAI-compatible API through the official `openai` SDK: only the base URL changes."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest

from tests.conftest import KEYS, UPSTREAM_KEY, GatewayProcess
from tests.fakes.openai_upstream import Behavior, FakeOpenAI, expected_embedding


def client(gw: GatewayProcess, key: str = KEYS["alpha"]) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def test_chat_completion(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    started = time.perf_counter()
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello gateway"}], temperature=0.3
    )
    round_trip_ms = (time.perf_counter() - started) * 1000
    reply = raw.parse()
    assert reply.choices[0].message.content == "echo: hello gateway"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (2, 3, 5)  # the fake's word counts
    assert raw.headers["x-gateway-target"] == "fake/gpt-4o-mini-upstream"
    overhead = raw.headers["x-gateway-overhead-ms"]
    assert re.fullmatch(r"\d+\.\d\d", overhead) and 0 < float(overhead) < round_trip_ms  # ms to 0.01, a share of the round trip
    rid = raw.headers["x-request-id"]
    assert re.fullmatch("[0-9a-f]{32}", rid)
    assert abs(int(rid[:12], 16) / 1000 - time.time()) < 60  # ms since the epoch first: ids sort by time
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.json["model"] == "gpt-4o-mini-upstream"  # per-target name mapping
    assert sent.json["temperature"] == 0.3
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the provider's key, not the caller's


def test_request_ids_sort_by_time_and_do_not_repeat(gateway: GatewayProcess) -> None:
    ids = []
    for _ in range(20):
        raw = client(gateway).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        ids.append(raw.headers["x-request-id"])
    assert len(set(ids)) == 20
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)


def test_client_request_id_is_kept(gateway: GatewayProcess) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers={"x-request-id": "req-abc.123"}
    )
    assert raw.headers["x-request-id"] == "req-abc.123"


def test_streamed_chat_matches_the_complete_answer(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunks=6))
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three four"}], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: one two three four"
    assert all(c.choices for c in chunks)  # the usage-only chunk the gateway asked for is not forwarded
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fake.requests[-1].json["stream_options"] == {"include_usage": True}


def test_stream_usage_when_the_client_asks(gateway: GatewayProcess) -> None:
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a b c"}], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)  # the fake's: "a b c", "echo: a b c"


def test_usage_is_estimated_when_upstream_reports_none(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(usage=False), Behavior(usage=False))
    raw = client(gateway).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello world"}]
    )
    assert raw.headers["x-gateway-usage"] == "estimated"
    usage = raw.parse().usage
    assert usage is not None
    assert usage.prompt_tokens == 9  # 3 per message + "user" + "hello world" + 3 priming (tiktoken o200k)
    assert usage.completion_tokens == 4  # "echo: hello world"
    stream = client(gateway).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello world"}], stream=True, stream_options={"include_usage": True}
    )
    last = list(stream)[-1]
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (9, 4)


def test_legacy_completions(gateway: GatewayProcess) -> None:
    reply = client(gateway).completions.create(model="gpt-4o-mini", prompt="say this")
    assert reply.choices[0].text == "echo: say this"
    stream = client(gateway).completions.create(model="gpt-4o-mini", prompt="say this", stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == "echo: say this"


def test_embeddings_float_and_base64(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    c = client(gateway)
    result = c.embeddings.create(model="gpt-4o-mini", input=["first", "second"])  # the SDK asks for base64
    assert fake.requests[-1].json["encoding_format"] == "base64"
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[1].embedding == pytest.approx(expected_embedding("second"), abs=1e-6)
    floats = c.embeddings.create(model="gpt-4o-mini", input="first", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(expected_embedding("first"), abs=1e-6)


def test_mock_model_offline(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    c = client(gateway)
    assert c.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "ping"}]).choices[0].message.content == "ping"
    chunks = list(c.chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "ping pong"}], stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "ping pong"
    assert len(c.embeddings.create(model="demo-echo", input="x").data[0].embedding) == 8
    assert fake.requests == []


def test_models_list_follows_the_team_globs(gateway: GatewayProcess) -> None:
    assert sorted(m.id for m in client(gateway).models.list()) == ["demo-echo", "gpt-4o-mini"]
    assert [m.id for m in client(gateway, KEYS["beta"]).models.list()] == ["demo-echo"]


def test_api_key_header_is_accepted(gateway: GatewayProcess) -> None:
    r = httpx.get(gateway.base_url + "/models", headers={"api-key": KEYS["beta"]})
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["demo-echo"]


def test_health_ready_metrics(gateway: GatewayProcess) -> None:
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/readyz").json()
    assert ready["status"] == "ready" and len(ready["config"]) == 16
    client(gateway).chat.completions.create(model="demo-echo", messages=[{"role": "user", "content": "m"}])
    text = httpx.get(gateway.url + "/metrics").text
    assert 'gateway_requests_total{model="demo-echo",status="200"}' in text
    assert "gateway_request_duration_seconds_bucket" in text


def test_admin_needs_an_admin_key(gateway: GatewayProcess) -> None:
    assert httpx.get(gateway.url + "/admin/policies", headers={"authorization": f"Bearer {KEYS['alpha']}"}).status_code == 403
    assert httpx.get(gateway.url + "/admin/policies").status_code == 401
    r = httpx.get(gateway.url + "/admin/policies", headers={"authorization": f"Bearer {KEYS['admin']}"})
    assert r.status_code == 200
    assert r.json()["files"] == ["default.toml"] and r.json()["open_mode"] is False

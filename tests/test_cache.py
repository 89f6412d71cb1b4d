"""The response cache: keys, the memory store, stored answers, and a real gateway answering from it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.breaker import Breaker
from gateway.cache import entry
from gateway.cache.key import cache_key, deterministic, scope
from gateway.cache.store import MemoryStore, open_store
from gateway.providers.base import Operation, Usage
from tests.cache_support import POLICY, async_client, client, config
from tests.conftest import KEYS, GatewayFactory, GatewayProcess
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.traceutil import trace

# ---------------------------------------------------------------------------------------------- keys

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}

CHANGES_OUTPUT: list[tuple[str, Any]] = [
    ("messages", [{"role": "user", "content": "hello"}]),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
    ("tool_choice", "required"),
    ("response_format", {"type": "json_object"}),
    ("temperature", 0.5),
    ("top_p", 0.9),
    ("max_tokens", 10),
    ("max_completion_tokens", 10),
    ("stop", ["\n"]),
    ("seed", 7),
    ("n", 2),
    ("logit_bias", {"50256": -100}),
    ("presence_penalty", 0.5),
    ("frequency_penalty", 0.5),
    ("logprobs", True),
    ("top_logprobs", 3),
    ("parallel_tool_calls", False),
    ("reasoning_effort", "low"),
    ("modalities", ["text"]),
    ("some_future_parameter", 1),  # unknown fields are part of the key: they may change the answer
]


def key_of(body: dict[str, Any], model: str = "m", team: str = "a", op: Operation = Operation.CHAT, prompt: str | None = None) -> str:
    return cache_key(scope(team, False), op, model, body, prompt)


@pytest.mark.parametrize(("field", "value"), CHANGES_OUTPUT, ids=[f for f, _ in CHANGES_OUTPUT])
def test_every_output_changing_field_changes_the_key(field: str, value: Any) -> None:
    assert key_of({**BASE, field: value}) != key_of(BASE)


def test_the_served_model_operation_prompt_and_scope_change_the_key() -> None:
    base = key_of(BASE)
    assert key_of(BASE, model="other") != base
    assert key_of(BASE, op=Operation.COMPLETION) != base
    assert key_of(BASE, prompt="abc123") != base
    assert key_of(BASE, team="b") != base
    assert cache_key(scope("a", True), Operation.CHAT, "m", BASE) != base


@pytest.mark.parametrize(
    "extra",
    [
        {"user": "u1"},
        {"metadata": {"k": "v"}},
        {"stream": True},
        {"stream_options": {"include_usage": True}},
        {"store": True},
        {"model": "another-name"},
        {"temperature": 0.0},
    ],
)
def test_fields_that_do_not_change_the_output_keep_the_key(extra: dict[str, Any]) -> None:
    assert key_of({**BASE, **extra}) == key_of(BASE)


def test_key_order_does_not_matter() -> None:
    assert key_of({"temperature": 0, "messages": BASE["messages"]}) == key_of(dict(BASE))


def test_deterministic_means_temperature_zero_or_a_seed() -> None:
    assert deterministic(Operation.CHAT, {"temperature": 0})
    assert deterministic(Operation.CHAT, {"temperature": 1, "seed": 3})
    assert not deterministic(Operation.CHAT, {})
    assert not deterministic(Operation.CHAT, {"temperature": 0.2})
    assert not deterministic(Operation.CHAT, {"temperature": False})
    assert deterministic(Operation.EMBEDDINGS, {})


# ---------------------------------------------------------------------------------------------- stores


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_memory_store_is_an_lru_bounded_by_entries() -> None:
    store = MemoryStore(max_entries=2, max_bytes=10_000)
    await store.set("a", b"1", 60)
    await store.set("b", b"2", 60)
    assert await store.get("a") == b"1"  # a is now the most recently used
    await store.set("c", b"3", 60)
    assert await store.get("b") is None
    assert await store.get("a") == b"1" and await store.get("c") == b"3"


async def test_memory_store_is_bounded_by_bytes() -> None:
    store = MemoryStore(max_entries=100, max_bytes=100)
    for i in range(10):
        await store.set(f"k{i}", b"x" * 30, 60)
    assert store.bytes <= 100 and len(store) == 3
    assert await store.get("k9") == b"x" * 30
    await store.set("huge", b"x" * 200, 60)  # larger than the whole store: not kept, nothing evicted
    assert await store.get("huge") is None and len(store) == 3


async def test_memory_store_entries_expire() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    await store.set("a", b"1", 10)
    clock.now += 9.9
    assert await store.get("a") == b"1"
    clock.now += 0.2
    assert await store.get("a") is None and store.bytes == 0


def test_breaker_opens_after_failures_and_probes_after_cooldown() -> None:
    clock = Clock()
    breaker = Breaker(threshold=2, cooldown_s=5, clock=clock)
    error = OSError("down")
    breaker.failure(error)
    assert breaker.allow()
    breaker.failure(error)
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one
    breaker.success()
    assert breaker.allow()


def test_store_urls() -> None:
    assert isinstance(open_store("memory"), MemoryStore)
    assert isinstance(open_store("memory://?max_entries=5&max_bytes=1000"), MemoryStore)
    with pytest.raises(ValueError, match="unknown cache backend"):
        open_store("memcached://x")


# ---------------------------------------------------------------------------------------------- entries

FINAL: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "up",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "other", "arguments": "{}"}},
                ],
                "reasoning_content": "The user wants a search.",  # a provider's reasoning, kept through a replay
                "thinking_blocks": [{"type": "thinking", "thinking": "The user wants a search.", "signature": "sig=="}],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "second", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        },
    ],
}


def test_a_replayed_stream_folds_back_into_the_same_answer() -> None:
    value = entry.encode(FINAL, Usage(12, 3), priced=True)
    usage, priced, body, response_id, response_model = entry.decode(value)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, priced) == (12, 3, 12, True)
    assert (response_id, response_model) == (FINAL["id"], FINAL["model"])
    assembler = entry.Assembler()
    events = entry.replay(body, include_usage=True)
    assert events[-1] == b"data: [DONE]\n\n"
    for event in events:
        assembler.feed(event[:5])  # in awkward pieces, as a network would deliver them
        assembler.feed(event[5:])
    final = assembler.final()
    assert final is not None
    assert final["choices"] == FINAL["choices"]
    usage_chunk = orjson.loads(events[-2][6:])
    assert usage_chunk["usage"]["prompt_tokens_details"]["cached_tokens"] == 12 and usage_chunk["usage"]["cost_usd"] == 0.0


def test_an_unfinished_or_failed_stream_is_not_an_answer() -> None:
    events = entry.replay(orjson.dumps(FINAL), include_usage=False)
    broken = entry.Assembler()
    for event in events[:-1]:
        broken.feed(event)
    assert broken.final() is None
    failed = entry.Assembler()
    for event in events[:-1]:
        failed.feed(event)
    failed.feed(b'event: error\ndata: {"error": {}}\n\n')
    failed.feed(b"data: [DONE]\n\n")
    assert failed.final() is None


# ---------------------------------------------------------------------------------------------- the gateway


@pytest.fixture(scope="module")
def cache_gateway(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    from tests.conftest import start_gateway

    gw = start_gateway(tmp_path_factory.mktemp("cache"), config(upstream.base_url), {"p.toml": POLICY})
    yield gw
    gw.stop()


@pytest.fixture
def gw(cache_gateway: GatewayProcess, fake: FakeOpenAI) -> GatewayProcess:
    return cache_gateway


def unique() -> str:
    return uuid.uuid4().hex[:12]


def ask(gw: GatewayProcess, model: str, text: str, key: str = KEYS["alpha"], **kw: Any) -> Any:
    return client(gw, key).chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": text}], **kw)


def chat_calls(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path == "/v1/chat/completions")


def test_a_repeated_request_is_answered_from_the_cache(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    text = "hello " + unique()
    first = ask(gw, "cached", text, temperature=0.7, user="u1")
    second = ask(gw, "cached", text, temperature=0.7, user="u2", metadata={"x": "y"})
    assert first.headers["x-gateway-cache"] == "miss" and second.headers["x-gateway-cache"] == "hit"
    assert chat_calls(fake) == 1
    a, b = first.parse(), second.parse()
    assert b.choices[0].message.content == a.choices[0].message.content == "echo: " + text
    assert b.usage.prompt_tokens == a.usage.prompt_tokens
    assert b.usage.prompt_tokens_details.cached_tokens == a.usage.prompt_tokens
    assert b.usage.model_extra["cost_usd"] == 0.0
    assert float(first.headers["x-gateway-cost-usd"]) > 0 and float(second.headers["x-gateway-cost-usd"]) == 0.0
    record = trace(gw, second.headers["x-request-id"])  # the hit's trace: the request as sent, the answer as served
    assert (record["cache"], record["response_id"], record["cached_tokens"]) == ("hit", a.id, a.usage.prompt_tokens)
    assert (record["request"]["user"], record["request"]["metadata"], record["request"]["messages"][0]["content"]) == (
        "u2",
        {"x": "y"},
        text,
    )
    assert record["response"]["choices"][0]["message"]["content"] == "echo: " + text and record["response"]["usage"]["cost_usd"] == 0.0


def test_two_teams_never_share_an_entry(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    text = "tenant " + unique()
    assert ask(gw, "cached", text).headers["x-gateway-cache"] == "miss"
    beta = ask(gw, "cached", text, key=KEYS["beta"])
    assert beta.headers["x-gateway-cache"] == "miss"
    assert ask(gw, "cached", text, key=KEYS["beta"]).headers["x-gateway-cache"] == "hit"
    assert chat_calls(fake) == 2


def test_a_shared_model_shares_entries_across_teams(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    text = "shared " + unique()
    assert ask(gw, "shared", text).headers["x-gateway-cache"] == "miss"
    assert ask(gw, "shared", text, key=KEYS["beta"]).headers["x-gateway-cache"] == "hit"
    assert chat_calls(fake) == 1


def test_deterministic_caches_only_temperature_zero_or_seeded(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    text = "determ " + unique()
    results = [ask(gw, "determ", text, temperature=0.7).headers["x-gateway-cache"] for _ in range(2)]
    results += [ask(gw, "determ", text, temperature=0).headers["x-gateway-cache"] for _ in range(2)]
    results += [ask(gw, "determ", text, temperature=0.7, seed=1).headers["x-gateway-cache"] for _ in range(2)]
    assert results == ["bypass", "bypass", "miss", "hit", "miss", "hit"]
    assert chat_calls(fake) == 4


def test_models_without_cache_bypass(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    text = "plain " + unique()
    assert [ask(gw, "plain", text, temperature=0).headers["x-gateway-cache"] for _ in range(2)] == ["bypass", "bypass"]
    assert chat_calls(fake) == 2


def test_no_store_and_refresh(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    text = "controls " + unique()
    no_store = {"extra_headers": {"x-gateway-cache": "no-store"}}
    assert ask(gw, "cached", text, **no_store).headers["x-gateway-cache"] == "bypass"
    assert ask(gw, "cached", text).headers["x-gateway-cache"] == "miss"  # no-store wrote nothing
    assert ask(gw, "cached", text, **no_store).headers["x-gateway-cache"] == "bypass"  # and reads nothing
    refresh = ask(gw, "cached", text, extra_headers={"x-gateway-cache": "refresh"})
    assert refresh.headers["x-gateway-cache"] == "miss"
    assert chat_calls(fake) == 4
    hit = ask(gw, "cached", text)
    assert hit.headers["x-gateway-cache"] == "hit"
    assert hit.parse().id == refresh.parse().id  # the refreshed answer replaced the first one


def test_a_team_can_opt_out(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    text = "opt-out " + unique()
    assert [ask(gw, "cached", text, key=KEYS["admin"]).headers["x-gateway-cache"] for _ in range(2)] == ["bypass", "bypass"]
    assert chat_calls(fake) == 2


def test_failures_are_not_stored(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    text = "failing " + unique()
    fake.script(Behavior(status=400))
    with pytest.raises(openai.BadRequestError):
        ask(gw, "cached", text)
    assert ask(gw, "cached", text).headers["x-gateway-cache"] == "miss"
    fake.script(Behavior(break_after=2))
    stream = client(gw).chat.completions.create(model="cached", messages=[{"role": "user", "content": "broken " + text}], stream=True)
    with pytest.raises(openai.APIError):
        list(stream)
    again = client(gw).chat.completions.with_raw_response.create(
        model="cached", messages=[{"role": "user", "content": "broken " + text}], stream=True
    )
    assert again.headers["x-gateway-cache"] == "miss"
    list(again.parse())
    assert chat_calls(fake) == 4


TOOLS = [{"type": "function", "function": {"name": "search_kb", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]


def collect(stream: Any) -> tuple[str, list[tuple[str, str]], Any]:
    text, calls, usage = "", {}, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                slot = calls.setdefault(call.index, ["", ""])
                slot[0] += call.function.name or ""
                slot[1] += call.function.arguments or ""
    return text, [tuple(v) for _, v in sorted(calls.items())], usage


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool-calls"])
def test_stream_replay_matches_the_original(gw: GatewayProcess, fake: FakeOpenAI, tools: bool) -> None:
    text = ("CALL_TOOL " if tools else "") + "stream " + unique()
    kw: dict[str, Any] = {"tools": TOOLS} if tools else {}
    fake.script(Behavior(chunks=7, split_events=True))
    messages = [{"role": "user", "content": text}]
    original = client(gw).chat.completions.with_raw_response.create(model="cached", messages=messages, stream=True, **kw)
    assert original.headers["x-gateway-cache"] == "miss"
    first = collect(original.parse())
    replayed = client(gw).chat.completions.with_raw_response.create(
        model="cached", messages=messages, stream=True, stream_options={"include_usage": True}, **kw
    )
    assert replayed.headers["x-gateway-cache"] == "hit"
    second = collect(replayed.parse())
    assert second[:2] == first[:2]
    assert (first[1] == [("search_kb", '{"q": "x"}')]) if tools else (first[0] == "echo: " + text)
    assert second[2].prompt_tokens_details.cached_tokens == second[2].prompt_tokens > 0
    # the same entry answers a non-streaming request
    plain = client(gw).chat.completions.with_raw_response.create(model="cached", messages=messages, **kw)
    assert plain.headers["x-gateway-cache"] == "hit"
    message = plain.parse().choices[0].message
    assert (message.content or "") == first[0]
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls or []] == first[1]
    assert chat_calls(fake) == 1


def test_a_complete_answer_is_replayed_as_a_stream(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    messages = [{"role": "user", "content": "CALL_TOOL reverse " + unique()}]
    original = client(gw).chat.completions.create(model="cached", messages=messages, tools=TOOLS).choices[0].message
    raw = client(gw).chat.completions.with_raw_response.create(model="cached", messages=messages, tools=TOOLS, stream=True)
    assert raw.headers["x-gateway-cache"] == "hit" and raw.headers["content-type"].startswith("text/event-stream")
    text, calls, _ = collect(raw.parse())
    assert calls == [(c.function.name, c.function.arguments) for c in original.tool_calls or []] and calls
    assert text == (original.content or "")
    assert chat_calls(fake) == 1


def test_legacy_completions_and_embeddings_are_cached(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    prompt = "legacy " + unique()
    first = client(gw).completions.with_raw_response.create(model="cached", prompt=prompt)
    streamed = client(gw).completions.with_raw_response.create(model="cached", prompt=prompt, stream=True)
    assert (first.headers["x-gateway-cache"], streamed.headers["x-gateway-cache"]) == ("miss", "hit")
    assert "".join(c.choices[0].text for c in streamed.parse() if c.choices) == first.parse().choices[0].text == "echo: " + prompt
    words = ["emb " + unique(), "two"]
    one = client(gw).embeddings.with_raw_response.create(model="cached", input=words)
    two = client(gw).embeddings.with_raw_response.create(model="cached", input=words)
    assert (one.headers["x-gateway-cache"], two.headers["x-gateway-cache"]) == ("miss", "hit")
    assert [d.embedding for d in two.parse().data] == [d.embedding for d in one.parse().data]
    assert len(fake.requests) == 2


def test_cache_results_are_a_metric(gw: GatewayProcess) -> None:
    text = "metric " + unique()
    ask(gw, "cached", text)
    ask(gw, "cached", text)
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'gateway_cache_results_total{model="cached",result="hit"}' in metrics
    assert 'gateway_cache_results_total{model="cached",result="miss"}' in metrics


async def test_an_unused_store_costs_nothing_for_other_requests(gw: GatewayProcess) -> None:
    async with async_client(gw) as c:
        reply = await c.chat.completions.with_raw_response.create(model="plain", messages=[{"role": "user", "content": "x"}])
    assert reply.headers["x-gateway-cache"] == "bypass"


def test_state_cache_url_is_validated(gateway_factory: GatewayFactory, tmp_path: Any) -> None:
    import subprocess
    import sys

    path = tmp_path / "bad.toml"
    path.write_text(config("http://127.0.0.1:9/v1", state_cache="memcached://x"))
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "--config", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "state.cache" in result.stdout + result.stderr

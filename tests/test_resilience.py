"""Routing and resilience end to end: retries, fallbacks, timeouts, ejection, overload, adapters, rules."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.builders import api_key, policy, team
from tests.conftest import KEYS, GatewayFactory, GatewayProcess
from tests.fakes.openai_upstream import Behavior, FakeOpenAI

POLICY = {"p.toml": policy({"t": team("*")}, [api_key("k", "t", KEYS["alpha"])])}


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    a, b = FakeOpenAI().start(), FakeOpenAI().start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def fakes(pair: tuple[FakeOpenAI, FakeOpenAI]) -> tuple[FakeOpenAI, FakeOpenAI]:
    for f in pair:
        f.reset()
    return pair


def config(a: FakeOpenAI, b: FakeOpenAI, model_extra: str = "", extra: str = "", provider_extra: str = "", dead_port: int = 1) -> str:
    return f"""
[server]
host = "127.0.0.1"
sse_keepalive_s = 0.5
max_in_flight = 4
[providers.a]
kind = "openai"
base_url = "{a.base_url}"
first_byte_timeout_s = 1
idle_timeout_s = 1.5
{provider_extra}
[providers.b]
kind = "openai"
base_url = "{b.base_url}"
first_byte_timeout_s = 1
idle_timeout_s = 1.5
{provider_extra}
[providers.dead]
kind = "openai"
base_url = "http://127.0.0.1:{dead_port}/v1"
[providers.demo]
kind = "mock"
[models.ab]
targets = [{{ provider = "a", model = "m-a" }}, {{ provider = "b", model = "m-b" }}]
{model_extra}
[models.only-a]
targets = [{{ provider = "a", model = "m-a" }}]
retries = 2
[models.dead]
targets = [{{ provider = "dead", model = "x" }}]
fallbacks = ["only-a", "demo-echo"]
[models.demo-echo]
targets = [{{ provider = "demo", model = "echo" }}]
{extra}
[policies]
dir = "policies"
"""


def chat(gw: GatewayProcess, model: str, **kwargs: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **kwargs}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEYS['alpha']}"}, timeout=30)


def test_500_is_retried_on_the_other_target(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b), POLICY)
    a.script(Behavior(status=500))
    b.script(Behavior(status=500))
    r = chat(gw, "ab")  # the first target fails, then the other one; the third attempt (retries = 2) is answered
    assert r.status_code == 200, r.text
    assert len(a.requests) + len(b.requests) == 3
    assert {len(a.requests), len(b.requests)} == {1, 2}
    assert r.headers["x-gateway-target"] in ("a/m-a", "b/m-b")
    served = a if r.headers["x-gateway-target"] == "a/m-a" else b
    assert served.requests[-1].json["model"] == ("m-a" if served is a else "m-b")


def test_429_retry_after_is_honoured(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b), POLICY)
    a.script(Behavior(status=429, headers={"Retry-After": "1"}))
    started = time.monotonic()
    r = chat(gw, "only-a")
    elapsed = time.monotonic() - started
    assert r.status_code == 200 and len(a.requests) == 2
    assert 0.95 <= elapsed < 2.5


def test_retry_after_beyond_the_deadline_is_not_waited_for(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b, extra='[models.short]\ntargets = [{ provider = "a", model = "m-a" }]\ndeadline_s = 3\n'), POLICY)
    a.script(Behavior(status=429, headers={"Retry-After": "30"}))
    started = time.monotonic()
    r = chat(gw, "short")
    assert r.status_code == 429 and r.headers["retry-after"] == "30"
    assert time.monotonic() - started < 1 and len(a.requests) == 1


def test_slow_first_byte_times_out_and_moves_on(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b, model_extra='strategy = "least_outstanding"'), POLICY)
    a.script(Behavior(delay_s=3))
    b.script(Behavior(delay_s=3))
    started = time.monotonic()
    r = chat(gw, "ab")
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    assert 1.9 < elapsed < 3.5  # two 1 s first-byte timeouts (one per target), then an answer
    assert len(a.requests) + len(b.requests) == 3


def test_refused_connection_falls_back_in_order(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b), POLICY)
    r = chat(gw, "dead")
    assert r.status_code == 200 and r.headers["x-gateway-target"] == "a/m-a"
    a.script(Behavior(status=503), Behavior(status=503), Behavior(status=503))
    r = chat(gw, "dead")  # dead refuses, only-a fails three times (retries = 2), then demo-echo
    assert r.status_code == 200 and r.headers["x-gateway-target"] == "demo/echo"
    assert r.json()["choices"][0]["message"]["content"] == "hi"


def test_non_retryable_errors_are_not_retried(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b), POLICY)
    a.script(Behavior(status=400))
    r = chat(gw, "only-a")
    assert r.status_code == 400 and len(a.requests) == 1


def test_streams_break_and_stall_mid_way_are_never_retried(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b), POLICY)
    client = openai.OpenAI(base_url=gw.base_url, api_key=KEYS["alpha"], max_retries=0)
    for behavior in (Behavior(chunks=6, chunk_delay_s=0.05, break_after=3), Behavior(chunks=6, chunk_delay_s=0.05, stall_after=3)):
        a.reset()
        a.script(behavior)
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model="only-a", messages=[{"role": "user", "content": "x"}], stream=True))
        assert len(a.requests) == 1


def test_keepalive_comments_while_a_stream_is_silent(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b, provider_extra=""), POLICY)
    a.script(Behavior(chunks=3, chunk_delay_s=1.2))  # idle 1.5 s allowed; keep-alive every 0.5 s
    body = {"model": "only-a", "stream": True, "messages": [{"role": "user", "content": "slow one"}]}
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEYS['alpha']}"}) as r:
        text = r.read().decode()
    assert text.count(": keep-alive") >= 3
    assert text.rstrip().endswith("data: [DONE]")


def test_stream_deadline(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b, extra='[models.short]\ntargets = [{ provider = "a", model = "m-a" }]\ndeadline_s = 1.5\n'), POLICY)
    a.script(Behavior(chunks=10, chunk_delay_s=0.4))
    body = {"model": "short", "stream": True, "messages": [{"role": "user", "content": "a b c d e f g h i j"}]}
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEYS['alpha']}"}) as r:
        text = r.read().decode()
    assert "deadline_exceeded" in text and "[DONE]" not in text


def test_flapping_target_is_ejected_then_restored(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b, model_extra="eject_after = 2\nejection_s = 1.5\nretries = 1"), POLICY)
    a.script(*[Behavior(status=500)] * 2)
    while len(a.requests) < 2:  # until a has failed twice
        assert chat(gw, "ab").status_code == 200
    a.reset()
    b.reset()
    for _ in range(20):  # ejected: no traffic at all
        assert chat(gw, "ab").headers["x-gateway-target"] == "b/m-b"
    assert a.requests == []
    time.sleep(1.6)
    for _ in range(20):  # probed, healthy again, back in rotation
        assert chat(gw, "ab").status_code == 200
    assert 3 <= len(a.requests) <= 17


def test_overload_is_503_with_retry_after(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b), POLICY)
    a.script(*[Behavior(delay_s=0.8)] * 10)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: chat(gw, "only-a"), range(10)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) == 4 and codes.count(503) == 6  # max_in_flight = 4
    rejected = next(r for r in results if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1" and rejected.json()["error"]["code"] == "overloaded"


def test_lora_adapters_share_a_base_and_split_by_weight(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    extra = """[models.lora]
targets = [
  { provider = "a", model = "llama-3-8b", weight = 1 },
  { provider = "a", model = "llama-3-8b", adapter = "support-v2", weight = 3 },
]
"""
    gw = gateway_factory(config(a, b, extra=extra), POLICY)
    targets = [chat(gw, "lora").headers["x-gateway-target"] for _ in range(200)]
    assert set(targets) == {"a/llama-3-8b", "a/support-v2"}
    assert 0.62 < targets.count("a/support-v2") / 200 < 0.88
    assert {r.json["model"] for r in a.requests} == {"llama-3-8b", "support-v2"}


def test_sticky_users_stay_on_one_target(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b, model_extra="sticky = true"), POLICY)
    for user in ("alice", "bob", "carol", "dave"):
        assert len({chat(gw, "ab", user=user).headers["x-gateway-target"] for _ in range(8)}) == 1


def test_rules_pick_the_smallest_capable_model(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    extra = """[models.auto]
targets = [{ provider = "b", model = "big" }]
[[models.auto.rules]]
name = "tagged-cheap"
model = "demo-echo"
route_tag = "cheap"
[[models.auto.rules]]
name = "short-no-tools"
model = "only-a"
max_prompt_tokens = 50
tools = false
"""
    gw = gateway_factory(config(a, b, extra=extra), POLICY)
    headers = {"authorization": f"Bearer {KEYS['alpha']}"}
    body = {"model": "auto", "messages": [{"role": "user", "content": "short question"}]}
    assert httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers).headers["x-gateway-target"] == "a/m-a"
    tagged = httpx.post(gw.base_url + "/chat/completions", json=body, headers={**headers, "x-gateway-route-tag": "cheap"})
    assert tagged.headers["x-gateway-target"] == "demo/echo"
    long = {"model": "auto", "messages": [{"role": "user", "content": "word " * 100}]}
    assert httpx.post(gw.base_url + "/chat/completions", json=long, headers=headers).headers["x-gateway-target"] == "b/big"
    tools = {**body, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}
    assert httpx.post(gw.base_url + "/chat/completions", json=tools, headers=headers).headers["x-gateway-target"] == "b/big"


def test_sigterm_drain_waits_for_a_request_between_retries(gateway_factory: GatewayFactory, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    a, b = fakes
    gw = gateway_factory(config(a, b), POLICY)
    a.script(Behavior(status=503, headers={"Retry-After": "1"}))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(chat, gw, "only-a")
        while not a.requests:
            time.sleep(0.01)
        gw.process.send_signal(signal.SIGTERM)  # while the request sleeps before its retry
        r = pending.result(10)
    assert r.status_code == 200 and len(a.requests) == 2
    assert gw.process.wait(10) == 0

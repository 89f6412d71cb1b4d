"""Charging what was consumed, on every ending (issue #13 item 2; docs/cost.md "Charging").

A stream that ends early (the client leaves, the model's deadline passes, the upstream breaks, a
coalesced leader leaves) is charged its prompt plus the completion relayed so far; the trace row,
the budget and the tpm settlement carry the same figures. A complete answer that was sent and never
came is charged its prompt. Real gateway processes, the fake OpenAI upstream streaming 200 chunks
slowly, memory limits and real Redis.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
import redis

from gateway.limits import rules
from gateway.pipeline.usage import prompt_tokens
from gateway.providers.base import Operation
from gateway.tokens import Tokenizer
from tests.builders import api_key, policy, team
from tests.conftest import KEYS, GatewayFactory, GatewayProcess, config_for, need_redis
from tests.fakes.openai_upstream import Behavior, FakeOpenAI
from tests.traceutil import trace

CHUNKS = 200
WORDS = " ".join(["hello"] * CHUNKS)  # the fake echoes it: "echo: hello hello ...", about one token a chunk
MESSAGES = [{"role": "user", "content": WORDS}]
TOKENIZER = Tokenizer()
PROMPT = prompt_tokens(TOKENIZER, Operation.CHAT, {"messages": MESSAGES}, "gpt-4o-mini")  # what the gateway counts
SLOW = Behavior(chunks=CHUNKS, chunk_delay_s=0.02)
KEY = {name: f"sk-test-{name}-{uuid.uuid4().hex}" for name in ("spender", "streamer", "free")}
PRICED = """
[models."priced"]
targets = [{ provider = "fake", model = "gpt-4o-mini" }]
retries = 0
price = { input_per_million = 1000000.0, output_per_million = 1000000.0 }  # $1 a token: cost = tokens

[models."hasty"]
targets = [{ provider = "fake", model = "gpt-4o-mini" }]
retries = 0
deadline_s = 1.5
price = { input_per_million = 1000000.0, output_per_million = 1000000.0 }

[models."shared"]
targets = [{ provider = "fake", model = "gpt-4o-mini" }]
retries = 0
cache = "all"
price = { input_per_million = 1000000.0, output_per_million = 1000000.0 }
"""
# the stream reserves PROMPT + 300 output tokens; a later "hi" with max_tokens 200 reserves ~208 more.
# Charged nothing (before), both fit the budget; charged PROMPT + ~150, the second does not.
BUDGET = PROMPT + 320
POLICY = policy(
    {"spender": team("*", budget_usd_per_day=float(BUDGET)), "streamer": team("*", tpm=PROMPT + 100), "free": team("*")},
    [
        *(api_key(f"{name}-app", name, KEY[name]) for name in ("spender", "streamer", "free")),
        api_key("ops", "free", KEYS["admin"], admin=True),
    ],
)


def config(upstream: str, limits: str = "memory") -> str:
    return config_for(upstream, PRICED, state=f'limits = "{limits}"')


def open_stream(gw: GatewayProcess, who: str, model: str = "priced", **extra: Any) -> tuple[socket.socket, str]:
    """A streamed chat request on a raw socket; returns it (headers read) and its request id."""
    rid = uuid.uuid4().hex
    body = json.dumps({"model": model, "stream": True, "messages": MESSAGES, "max_tokens": 300, **extra}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY[who]}\r\nx-request-id: {rid}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock, rid


def read_events(sock: socket.socket, count: int) -> bytes:
    """Read until `count` content chunks have arrived (or the stream ends)."""
    received = b""
    while received.count(b'"content":"') < count + 1:  # the role chunk's content is "" too
        data = sock.recv(65536)
        if not data:
            break
        received += data
    return received


def relayed_tokens(received: bytes) -> int:
    """The completion tokens (tiktoken) of the text a client received."""
    text = ""
    for line in received.split(b"\n"):
        if line.startswith(b"data: {") and b'"choices":[{' in line:
            text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    return TOKENIZER.count_text(text, "gpt-4o-mini")


def leave_after(gw: GatewayProcess, who: str, chunks: int, model: str = "priced") -> str:
    sock, rid = open_stream(gw, who, model)
    read_events(sock, chunks)
    sock.close()
    return rid


def ask(gw: GatewayProcess, who: str, **extra: Any) -> httpx.Response:
    body = {"model": "priced", "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEY[who]}"}, timeout=30)


def assert_charged(row: dict[str, Any], status: int, error_type: str, low: int, high: int, prompt: int = PROMPT) -> None:
    """The row says what was consumed: the prompt, `low`..`high` completion tokens, cost = tokens ($1 each)."""
    assert (row["status"], row["error_type"]) == (status, error_type), row
    assert row["input_tokens"] == prompt, row
    assert low <= row["output_tokens"] <= high, row
    assert row["cost_usd"] == pytest.approx(row["input_tokens"] + row["output_tokens"]), row


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_a_client_that_leaves_after_150_chunks_is_charged_them(gateway_factory: GatewayFactory, fake: FakeOpenAI, backend: str) -> None:
    limits = "memory"
    if backend == "redis":
        need_redis()
        limits = f"redis://127.0.0.1:6379/13?prefix=gwcharge-{uuid.uuid4().hex[:10]}:"
    gw = gateway_factory(config(fake.base_url, limits), {"p.toml": POLICY})
    fake.script(SLOW)
    rid = leave_after(gw, "spender", 150)
    row = trace(gw, rid)
    assert_charged(row, 499, "client_disconnected", 140, 190)  # what was relayed, not 0, not all 200
    assert fake.wait_for_disconnect(5) is not None
    # the budget was charged the same: a request that fits only an untouched budget is refused
    refused = ask(gw, "spender", max_tokens=200)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded", refused.text
    small = ask(gw, "spender", max_tokens=10)  # what is left still serves a small one
    assert small.status_code == 200
    if backend == "redis":  # the budget's spent figure is exactly what the two trace rows say
        raw = redis.Redis.from_url("redis://127.0.0.1:6379/13")
        prefix = limits.partition("prefix=")[2]
        (key,) = raw.keys(f"{prefix}usd:team:spender:*")
        small_cost = trace(gw, small.headers["x-request-id"])["cost_usd"]
        assert int(raw.hget(key, "s")) == rules.nano_usd(row["cost_usd"]) + rules.nano_usd(small_cost)  # type: ignore[arg-type]
        assert int(raw.hget(key, "r")) == 0  # type: ignore[arg-type]


def test_tpm_is_charged_what_a_stream_that_ended_early_consumed(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config(fake.base_url), {"p.toml": POLICY})
    fake.script(SLOW)
    rid = leave_after(gw, "streamer", 150)
    row = trace(gw, rid)
    assert_charged(row, 499, "client_disconnected", 140, 190)
    # tpm = PROMPT + 100: the prompt and ~150 completion tokens used it up (handed back, a "hi" would pass)
    refused = ask(gw, "streamer")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "tpm_exceeded", refused.text


def test_a_stream_past_its_deadline_is_charged_what_it_relayed(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config(fake.base_url), {"p.toml": POLICY})
    fake.script(SLOW)  # 200 chunks at 20 ms: 4 s, past the 1.5 s deadline
    sock, rid = open_stream(gw, "free", model="hasty")
    received = read_events(sock, CHUNKS)
    sock.close()
    assert b"event: error" in received and b"deadline_exceeded" in received
    relayed = relayed_tokens(received)
    row = trace(gw, rid)
    assert 30 < relayed < CHUNKS - 30  # it really ended mid-way
    assert_charged(row, 504, "deadline_exceeded", relayed, relayed + 5)  # + what was still on its way


def test_a_stream_the_upstream_breaks_is_charged_what_it_relayed(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config(fake.base_url), {"p.toml": POLICY})
    fake.script(Behavior(chunks=CHUNKS, chunk_delay_s=0.005, break_after=101))  # the role chunk and 100 content chunks
    sock, rid = open_stream(gw, "free")
    received = read_events(sock, CHUNKS)
    sock.close()
    assert b"event: error" in received
    row = trace(gw, rid)
    assert row["status"] == 502 and row["error_type"] in ("upstream_disconnected", "stream_incomplete"), row
    assert_charged(row, 502, row["error_type"], 95, 105)


def test_an_unanswered_complete_request_is_charged_its_prompt(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    """Sent, and no answer within the first-byte timeout (2 s): the provider bills the prompt."""
    gw = gateway_factory(config(fake.base_url), {"p.toml": POLICY})
    fake.script(Behavior(delay_s=4))
    rid = uuid.uuid4().hex
    body = {"model": "priced", "messages": MESSAGES}
    answer = httpx.post(
        gw.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {KEY['free']}", "x-request-id": rid}, timeout=30
    )
    assert answer.status_code == 504
    row = trace(gw, rid)
    assert (row["status"], row["error_type"]) == (504, "first_byte_timeout")
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (PROMPT, 0, pytest.approx(PROMPT))


def test_a_coalesced_leader_that_leaves_pays_for_the_whole_call_once(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    """The call goes on for the follower; the leader (499) is charged all of it when it ends, the
    follower nothing: one call, one charge."""
    gw = gateway_factory(config(fake.base_url), {"p.toml": POLICY})
    fake.script(SLOW)
    leader, leader_rid = open_stream(gw, "free", model="shared")
    read_events(leader, 10)
    follower, follower_rid = open_stream(gw, "free", model="shared")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(read_events(follower, CHUNKS + 5)))
    reader.start()
    time.sleep(0.5)
    leader.close()
    reader.join(30)
    follower.close()
    assert b"[DONE]" in got[0] and len(fake.requests) == 1
    lead, follow = trace(gw, leader_rid), trace(gw, follower_rid)
    assert (lead["cache"], follow["cache"]) == ("miss", "coalesced")
    # the whole call it started, as the upstream's usage says (the fake counts words: 200 in, 201 out)
    assert_charged(lead, 499, "client_disconnected", CHUNKS + 1, CHUNKS + 1, prompt=CHUNKS)
    assert (follow["status"], follow["cost_usd"]) == (200, 0.0)


def test_a_coalesced_call_everyone_left_is_charged_to_its_leader(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config(fake.base_url), {"p.toml": POLICY})
    fake.script(SLOW)
    leader, leader_rid = open_stream(gw, "free", model="shared")
    read_events(leader, 10)
    follower, follower_rid = open_stream(gw, "free", model="shared")
    read_events(follower, 20)
    leader.close()
    time.sleep(0.5)
    follower.close()  # the last one: the call is cancelled
    assert fake.wait_for_disconnect(5) is not None
    lead, follow = trace(gw, leader_rid), trace(gw, follower_rid)
    assert_charged(lead, 499, "client_disconnected", 25, 120)
    assert not follow["cost_usd"] and follow["status"] == 499  # a follower pays nothing


def test_a_shared_call_that_was_never_answered_charges_its_leader_the_prompt(gateway_factory: GatewayFactory, fake: FakeOpenAI) -> None:
    gw = gateway_factory(config(fake.base_url), {"p.toml": POLICY})
    fake.script(Behavior(delay_s=4))
    rid = uuid.uuid4().hex
    body = {"model": "shared", "messages": MESSAGES}
    headers = {"authorization": f"Bearer {KEY['free']}", "x-request-id": rid}
    answer = httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=30)
    assert answer.status_code == 504
    row = trace(gw, rid)
    assert (row["status"], row["cache"]) == (504, "miss")
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (PROMPT, 0, pytest.approx(PROMPT))

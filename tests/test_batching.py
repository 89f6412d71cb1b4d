"""Embeddings micro-batching: one team's concurrent requests for a model go upstream as one call.

A live gateway in front of a fake OpenAI of this module's own, which answers embeddings after a
latency (so concurrent requests really overlap), counts usage with tiktoken, and refuses an input
holding REJECT_INPUT with a 400 that quotes it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway import tokens
from gateway.batching import apportion, approx_tokens, split_inputs
from tests.builders import fake_provider
from tests.cache_support import POLICY, async_client
from tests.conftest import KEYS, GatewayProcess, start_gateway
from tests.fakes.openai_upstream import REJECT_INPUT, Behavior, FakeOpenAI, expected_embedding
from tests.traceutil import trace

UPSTREAM_MODEL = "text-embedding-3-small"
LATENCY_S = 0.25  # the fake's answer time: long beside the spread of a burst's arrivals, on a loaded machine


TOKENIZER = tokens.Tokenizer()


def tiktoken_count(text: str) -> int:
    return TOKENIZER.count_text(text, UPSTREAM_MODEL)


def config(upstream_url: str) -> str:
    """`emb`: the default batching; `emb-window`: a request of an idle group waits 100 ms for company;
    `emb-shared`: the same, with answers cached and shared across teams."""
    return f"""
[server]
host = "127.0.0.1"

[state]
traces = "sqlite:///traces.db"

{fake_provider(upstream_url, timeout_s=10)}
[models.emb]
targets = [{{ provider = "fake", model = "{UPSTREAM_MODEL}" }}]
retries = 0
price = {{ input_per_million = 1.0, output_per_million = 0.0 }}

[models.emb-window]
targets = [{{ provider = "fake", model = "{UPSTREAM_MODEL}" }}]
retries = 0
batch = {{ window_ms = 100 }}

[models.emb-shared]
targets = [{{ provider = "fake", model = "{UPSTREAM_MODEL}" }}]
retries = 0
cache = "all"
cache_scope = "shared"
batch = {{ window_ms = 100 }}

[policies]
dir = "policies"
"""


@pytest.fixture(scope="module")
def own_upstream() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI().start()
    fake.embeddings_delay_s = LATENCY_S
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def batching_gateway(tmp_path_factory: pytest.TempPathFactory, own_upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("batch"), config(own_upstream.base_url), {"p.toml": POLICY})
    yield gw
    gw.stop()


@pytest.fixture
def fake(own_upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    own_upstream.reset()
    own_upstream.embedding_tokens = tiktoken_count
    yield own_upstream
    own_upstream.embedding_tokens = None


@pytest.fixture
def gw(batching_gateway: GatewayProcess, fake: FakeOpenAI) -> GatewayProcess:
    return batching_gateway


def calls(fake: FakeOpenAI) -> list[list[Any]]:
    """The inputs of each upstream embeddings call."""
    out = []
    for r in fake.requests:
        if r.path == "/v1/embeddings":
            raw = r.json["input"]
            out.append([raw] if isinstance(raw, str) else raw)
    return out


def unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


# units -------------------------------------------------------------------------------------------
def test_apportion_adds_up_and_follows_the_weights() -> None:
    assert apportion(10, [1, 1]) == [5, 5]
    assert sum(apportion(7, [1, 1, 1])) == 7
    assert apportion(7, [1, 1, 1]) == [3, 2, 2]  # equal remainders: the earlier member first
    assert apportion(100, [1, 3]) == [25, 75]
    assert apportion(12, [3, 4, 5]) == [3, 4, 5]  # counts that add up to the total are kept as they are
    assert apportion(5, [0, 0]) == [3, 2]
    assert apportion(0, [4, 4]) == [0, 0]


def test_inputs_are_split_by_kind() -> None:
    assert split_inputs("a") == ("text", ["a"])
    assert split_inputs(["a", "b"]) == ("text", ["a", "b"])
    assert split_inputs([1, 2, 3]) == ("tokens", [[1, 2, 3]])
    assert split_inputs([[1], [2, 3]]) == ("tokens", [[1], [2, 3]])
    assert split_inputs(["a", 1]) is None
    assert approx_tokens(["abcdefgh", [1, 2]]) == 3 + 2


# formation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("stagger_s", [0.0, 0.008])
async def test_fifty_concurrent_requests_make_a_handful_of_calls(gw: GatewayProcess, fake: FakeOpenAI, stagger_s: float) -> None:
    """At once, or one every 8 ms (400 ms in all, beyond one upstream call's time): those that arrive
    while a call is in flight go together as the next one, whatever the timer."""

    async def one(c: openai.AsyncOpenAI, i: int, text: str) -> openai.types.CreateEmbeddingResponse:
        await asyncio.sleep(i * stagger_s)
        return await c.embeddings.create(model="emb", input=text)

    async with async_client(gw) as c:
        # open the connections first, so that arrivals follow the schedule rather than the pace of TCP handshakes
        await asyncio.gather(*(c.embeddings.create(model="emb", input=unique("warm")) for _ in range(50)))
        fake.reset()
        texts = [unique(f"text {i}") + " word" * (i % 5) for i in range(50)]
        replies = await asyncio.gather(*(one(c, i, t) for i, t in enumerate(texts)))
    sizes = [len(inputs) for inputs in calls(fake)]
    assert sum(sizes) == 50 and len(sizes) <= 5, sizes
    for text, reply in zip(texts, replies, strict=True):
        assert [d.index for d in reply.data] == [0]
        assert reply.data[0].embedding == pytest.approx(expected_embedding(text))


async def test_a_lone_request_goes_at_once_as_written(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.embeddings_delay_s = 0.0
    try:
        async with async_client(gw) as c:
            reply = await c.embeddings.create(model="emb", input="just me")
    finally:
        fake.embeddings_delay_s = LATENCY_S
    [sent] = [r.json for r in fake.requests]
    assert sent["input"] == "just me"  # not wrapped in a list: the caller's own body
    assert reply.usage.prompt_tokens == tiktoken_count("just me")


async def test_multi_input_requests_keep_their_order(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    groups = [[unique(f"g{g} item {i}") for i in range(g + 1)] for g in range(6)]
    async with async_client(gw) as c:
        replies = await asyncio.gather(*(c.embeddings.create(model="emb-window", input=g) for g in groups))
    assert len(calls(fake)) < len(groups)
    for group, reply in zip(groups, replies, strict=True):
        assert [d.index for d in reply.data] == list(range(len(group)))
        for text, d in zip(group, reply.data, strict=True):
            assert d.embedding == pytest.approx(expected_embedding(text))


async def test_different_parameters_are_not_batched_together(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    async with async_client(gw) as c:
        small, large, b64 = await asyncio.gather(
            c.embeddings.create(model="emb-window", input="same", dimensions=4),
            c.embeddings.create(model="emb-window", input="same", dimensions=12),
            c.with_raw_response.embeddings.create(model="emb-window", input="same", encoding_format="base64"),
        )
    assert len(calls(fake)) == 3
    assert small.data[0].embedding == pytest.approx(expected_embedding("same", 4))
    assert large.data[0].embedding == pytest.approx(expected_embedding("same", 12))
    encoded = b64.http_response.json()["data"][0]["embedding"]
    assert list(struct.unpack("<8f", base64.b64decode(encoded))) == pytest.approx(expected_embedding("same"))


# tenants -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["emb", "emb-window", "emb-shared"])
async def test_two_teams_never_share_a_call(gw: GatewayProcess, fake: FakeOpenAI, model: str) -> None:
    async with async_client(gw, KEYS["alpha"]) as a, async_client(gw, KEYS["beta"]) as b:
        texts = [(a, unique(f"alpha {i}")) for i in range(12)] + [(b, unique(f"beta {i}")) for i in range(12)]
        replies = await asyncio.gather(*(c.embeddings.create(model=model, input=t) for c, t in texts))
    made = calls(fake)
    for inputs in made:
        teams = {text.split()[0] for text in inputs}
        assert len(teams) == 1, f"one upstream call carried {sorted(teams)}: {inputs}"
    assert len(made) < len(texts)  # and batching still happened, per team
    for (_, text), reply in zip(texts, replies, strict=True):
        assert reply.data[0].embedding == pytest.approx(expected_embedding(text))


async def post(client: httpx.AsyncClient, gw: GatewayProcess, key: str, model: str, text: str) -> httpx.Response:
    return await client.post(gw.base_url + "/embeddings", json={"model": model, "input": text}, headers={"authorization": f"Bearer {key}"})


@pytest.mark.parametrize("model", ["emb", "emb-window", "emb-shared"])
async def test_an_invalid_input_fails_only_its_own_request(gw: GatewayProcess, fake: FakeOpenAI, model: str) -> None:
    bad_a, bad_b = unique(f"alpha secret {REJECT_INPUT}"), unique(f"beta secret {REJECT_INPUT}")
    sent = [(KEYS["alpha"], unique(f"alpha {i}")) for i in range(8)] + [(KEYS["beta"], unique(f"beta {i}")) for i in range(8)]
    sent[3:3], sent[12:12] = [(KEYS["alpha"], bad_a)], [(KEYS["beta"], bad_b)]
    async with httpx.AsyncClient(timeout=30) as h:
        answers = await asyncio.gather(*(post(h, gw, key, model, text) for key, text in sent))
    for (_, text), answer in zip(sent, answers, strict=True):
        others = [t for _, t in sent if t != text]
        assert not any(t in answer.text for t in others), (text, answer.text)  # nobody sees another's input
        if text in (bad_a, bad_b):
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and text in error["message"]  # its own, as the provider said
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"][0]["embedding"] == pytest.approx(expected_embedding(text))
    assert len(calls(fake)) < len(sent) + 8  # batched; then only the refused calls' members retried alone


async def test_a_failed_call_is_told_to_each_member_in_the_gateways_words(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    texts = [unique(f"gamma {i}") for i in range(4)]
    quoted = {"error": {"message": f"upstream exploded on {texts!r}", "type": "server_error"}}
    fake.script(Behavior(status=500, body=json.dumps(quoted).encode()))
    async with httpx.AsyncClient(timeout=30) as h:
        answers = await asyncio.gather(*(post(h, gw, KEYS["admin"], "emb-window", t) for t in texts))
    assert len(calls(fake)) == 1
    for answer in answers:
        assert answer.status_code == 502
        assert answer.json()["error"]["code"] == "upstream_server_error"
        assert not any(t in answer.text for t in texts), answer.text
        record = trace(gw, answer.headers["x-request-id"])  # the trace names the call it took part in
        assert record["status"] == 502 and record["target"] == f"fake/{UPSTREAM_MODEL}", record


# attribution -------------------------------------------------------------------------------------
TEXTS = [
    "plain words in a row",
    "数据库连接池的配置",  # few characters, many tokens
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",  # many characters, few tokens
    "3.14159 2.71828 1.41421 1.73205",
    "Zürich, Genève & Lausanne!",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(["gateway"] * 600),  # long: counted off the event loop
    "x",
]


async def test_each_request_is_charged_its_own_tokens(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    async with async_client(gw, KEYS["admin"]) as c:
        texts = [f"{text} {uuid.uuid4().hex[:4]}" for text in TEXTS * 2]
        raw = await asyncio.gather(*(c.with_raw_response.embeddings.create(model="emb", input=t) for t in texts))
    made = calls(fake)
    assert len(made) < len(texts)
    upstream_total = sum(tiktoken_count(t) for inputs in made for t in inputs)  # what the fake reported, call by call
    used = []
    for text, answer in zip(texts, raw, strict=True):
        reply = answer.parse()
        own = tiktoken_count(text)
        assert reply.usage.prompt_tokens == reply.usage.total_tokens == own, text
        assert float(answer.headers["x-gateway-cost-usd"]) == pytest.approx(own / 1e6)
        record = trace(gw, answer.headers["x-request-id"])
        assert record["input_tokens"] == own and record["cost_usd"] == pytest.approx(own / 1e6)
        used.append(own)
    assert sum(used) == upstream_total


async def test_a_total_that_differs_from_the_counts_is_apportioned(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.embedding_tokens = None  # the fake counts words: its totals are not tiktoken's
    texts = [unique(f"{text}") for text in TEXTS]
    async with async_client(gw) as c:
        replies = await asyncio.gather(*(c.embeddings.create(model="emb", input=t) for t in texts))
    assert sum(r.usage.prompt_tokens for r in replies) == sum(len(t.split()) for inputs in calls(fake) for t in inputs)


async def test_token_id_inputs_are_charged_their_count(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    ids = [[7] * (i + 1) for i in range(6)]
    async with async_client(gw) as c:
        replies = await asyncio.gather(*(c.embeddings.create(model="emb-window", input=[t]) for t in ids))
    assert len(calls(fake)) < len(ids)
    for t, reply in zip(ids, replies, strict=True):
        assert reply.usage.prompt_tokens == len(t)
        assert reply.data[0].embedding == pytest.approx(expected_embedding(t))


async def test_batch_sizes_are_a_metric(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    async with async_client(gw) as c:
        await asyncio.gather(*(c.embeddings.create(model="emb", input=unique("m")) for _ in range(8)))
    async with httpx.AsyncClient() as h:
        metrics = (await h.get(gw.url + "/metrics")).text
    count = next(line for line in metrics.splitlines() if line.startswith("gateway_embeddings_batch_requests_count"))
    assert float(count.split()[-1]) >= 1
    assert "gateway_embeddings_batch_inputs_bucket" in metrics

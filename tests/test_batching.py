"""Embeddings micro-batching: concurrent requests for one model go upstream as one call."""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from gateway.batching import apportion, approx_tokens, split_inputs
from tests.cache_support import POLICY, async_client, config
from tests.conftest import GatewayProcess, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI, expected_embedding


def test_apportion_adds_up_and_follows_the_weights() -> None:
    assert apportion(10, [1, 1]) == [5, 5]
    assert sum(apportion(7, [1, 1, 1])) == 7
    assert apportion(100, [1, 3]) == [25, 75]
    assert apportion(5, [0, 0]) in ([3, 2], [2, 3])
    assert apportion(0, [4, 4]) == [0, 0]


def test_inputs_are_split_by_kind() -> None:
    assert split_inputs("a") == ("text", ["a"])
    assert split_inputs(["a", "b"]) == ("text", ["a", "b"])
    assert split_inputs([1, 2, 3]) == ("tokens", [[1, 2, 3]])
    assert split_inputs([[1], [2, 3]]) == ("tokens", [[1], [2, 3]])
    assert split_inputs(["a", 1]) is None
    assert approx_tokens(["abcdefgh", [1, 2]]) == 3 + 2


@pytest.fixture(scope="module")
def batching_gateway(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("batch"), config(upstream.base_url), {"p.toml": POLICY})
    yield gw
    gw.stop()


@pytest.fixture
def gw(batching_gateway: GatewayProcess, fake: FakeOpenAI) -> GatewayProcess:
    return batching_gateway


def embedding_calls(fake: FakeOpenAI) -> list[int]:
    """The number of inputs of each upstream embeddings call."""
    sizes = []
    for r in fake.requests:
        if r.path == "/v1/embeddings":
            raw = r.json["input"]
            sizes.append(1 if isinstance(raw, str) else len(raw))
    return sizes


async def test_fifty_concurrent_requests_make_a_handful_of_calls(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    texts = [f"text {i} {uuid.uuid4().hex[:6]}" + " word" * (i % 5) for i in range(50)]
    async with async_client(gw) as c:
        replies = await asyncio.gather(*(c.embeddings.create(model="emb", input=t) for t in texts))
    calls = embedding_calls(fake)
    assert sum(calls) == 50 and 1 <= len(calls) <= 5, calls
    for text, reply in zip(texts, replies, strict=True):
        assert [d.index for d in reply.data] == [0]
        assert reply.data[0].embedding == pytest.approx(expected_embedding(text))
        assert reply.usage.prompt_tokens == reply.usage.total_tokens > 0
    # apportioned usage adds up to what the provider counted (words, in the fake)
    assert sum(r.usage.prompt_tokens for r in replies) == sum(len(t.split()) for t in texts)


async def test_multi_input_requests_keep_their_order(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    groups = [[f"g{g} item {i} {uuid.uuid4().hex[:4]}" for i in range(g + 1)] for g in range(6)]
    async with async_client(gw) as c:
        replies = await asyncio.gather(*(c.embeddings.create(model="emb", input=g) for g in groups))
    assert len(embedding_calls(fake)) < len(groups)
    for group, reply in zip(groups, replies, strict=True):
        assert [d.index for d in reply.data] == list(range(len(group)))
        for text, d in zip(group, reply.data, strict=True):
            assert d.embedding == pytest.approx(expected_embedding(text))


async def test_different_parameters_are_not_batched_together(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    async with async_client(gw) as c:
        small, large, b64 = await asyncio.gather(
            c.embeddings.create(model="emb", input="same", dimensions=4),
            c.embeddings.create(model="emb", input="same", dimensions=12),
            c.with_raw_response.embeddings.create(model="emb", input="same", encoding_format="base64"),
        )
    assert len(embedding_calls(fake)) == 3
    assert small.data[0].embedding == pytest.approx(expected_embedding("same", 4))
    assert large.data[0].embedding == pytest.approx(expected_embedding("same", 12))
    encoded = b64.http_response.json()["data"][0]["embedding"]
    assert list(struct.unpack("<8f", base64.b64decode(encoded))) == pytest.approx(expected_embedding("same"))


async def test_an_upstream_error_reaches_every_caller(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(status=400))
    async with async_client(gw) as c:
        results = await asyncio.gather(*(c.embeddings.create(model="emb", input=f"e{i}") for i in range(10)), return_exceptions=True)
    assert len(embedding_calls(fake)) == 1
    assert all(isinstance(r, openai.BadRequestError) for r in results), results


async def test_batch_sizes_are_a_metric(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    async with async_client(gw) as c:
        await asyncio.gather(*(c.embeddings.create(model="emb", input=f"m{i}") for i in range(8)))
    async with httpx.AsyncClient() as h:
        metrics = (await h.get(gw.url + "/metrics")).text
    count = next(line for line in metrics.splitlines() if line.startswith("gateway_embeddings_batch_requests_count"))
    assert float(count.split()[-1]) >= 1
    assert "gateway_embeddings_batch_inputs_bucket" in metrics

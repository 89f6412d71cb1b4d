"""Single-flight: identical requests in flight at the same moment share one upstream call."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.cache.flight import Flights
from gateway.errors import UpstreamError
from gateway.pipeline.record import Record
from tests.cache_support import POLICY, async_client, config
from tests.conftest import KEYS, GatewayProcess, start_gateway
from tests.fakes.openai_upstream import Behavior, FakeOpenAI


@pytest.fixture(scope="module")
def coalescing_gateway(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("coalesce"), config(upstream.base_url), {"p.toml": POLICY})
    yield gw
    gw.stop()


@pytest.fixture
def gw(coalescing_gateway: GatewayProcess, fake: FakeOpenAI) -> GatewayProcess:
    return coalescing_gateway


def messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": "together " + uuid.uuid4().hex[:12]}]


def upstream_calls(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path == "/v1/chat/completions")


# ---------------------------------------------------------------------------------------------- the registry


async def test_flight_broadcasts_chunks_to_late_subscribers_and_survives_the_leader() -> None:
    flights: Flights[Any] = Flights()
    release = asyncio.Event()

    async def work(flight: Any) -> None:
        flight.publish(b"one")
        await release.wait()
        flight.publish(b"two")
        flight.finish()

    record = Record("r", "chat", 0.0, 0.0)
    flight = flights.start("k", record, work)
    flight.join()  # the leader
    await flight.first()
    flight.join()  # a follower arrives after the first chunk
    follower = flight.follow()
    assert await anext(follower) == b"one"
    flight.leave()  # the leader goes away: the work must go on
    assert flight.task is not None and not flight.task.cancelled()
    release.set()
    assert [c async for c in follower] == [b"two"]
    flight.leave()
    await asyncio.sleep(0)
    assert len(flights) == 0


async def test_flight_is_cancelled_when_everyone_leaves() -> None:
    flights: Flights[Any] = Flights()
    cancelled = asyncio.Event()

    async def work(flight: Any) -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cancelled.set()

    flight = flights.start("k", Record("r", "chat", 0.0, 0.0), work)
    flight.join()
    await asyncio.sleep(0)
    flight.leave()
    await asyncio.wait_for(cancelled.wait(), 1)
    assert flights.get("k") is None


async def test_flight_errors_reach_every_subscriber() -> None:
    flights: Flights[Any] = Flights()

    async def work(flight: Any) -> None:
        await asyncio.sleep(0.01)
        raise UpstreamError("boom", code="x")

    flight = flights.start("k", Record("r", "chat", 0.0, 0.0), work)
    flight.join()
    flight.join()
    results = await asyncio.gather(flight.outcome(), flight.outcome(), return_exceptions=True)
    assert all(isinstance(r, UpstreamError) for r in results)


# ---------------------------------------------------------------------------------------------- the gateway


async def test_twenty_identical_requests_make_one_upstream_call(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(delay_s=0.5))
    body = messages()
    async with async_client(gw) as c:
        replies = await asyncio.gather(
            *(c.chat.completions.with_raw_response.create(model="cached", messages=body, temperature=0) for _ in range(20))
        )
    assert upstream_calls(fake) == 1
    results = sorted(r.headers["x-gateway-cache"] for r in replies)
    assert results == ["coalesced"] * 19 + ["miss"]
    answers = {r.parse().choices[0].message.content for r in replies}
    assert answers == {"echo: " + body[0]["content"]}
    assert all(r.headers["x-gateway-target"] == "fake/up-cached" for r in replies)
    for reply in replies:  # followers are told what they are billed: every prompt token cached, cost 0, like a hit
        usage, follower = reply.parse().usage, reply.headers["x-gateway-cache"] == "coalesced"
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        assert usage.prompt_tokens > 0 and (cached == usage.prompt_tokens) == follower
        assert (float(reply.headers["x-gateway-cost-usd"]) == 0.0) == follower


async def test_identical_streams_share_one_call_and_late_arrivals_get_every_chunk(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunks=8, chunk_delay_s=0.05))
    body = messages()

    async def read(delay: float) -> tuple[str, str, Any]:
        await asyncio.sleep(delay)
        async with async_client(gw) as c:
            raw = await c.chat.completions.with_raw_response.create(
                model="cached", messages=body, stream=True, stream_options={"include_usage": True}
            )
            chunks = [ch async for ch in raw.parse()]
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            return raw.headers["x-gateway-cache"], text, chunks[-1].usage

    results = await asyncio.gather(*(read(0.03 * i) for i in range(10)))  # some arrive mid-stream
    assert upstream_calls(fake) == 1
    assert sorted(h for h, _, _ in results) == ["coalesced"] * 9 + ["miss"]
    assert {t for _, t, _ in results} == {"echo: " + body[0]["content"]}
    for result, _, usage in results:  # the leader's usage chunk as priced; the followers' as a hit's
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        assert (cached == usage.prompt_tokens > 0, usage.model_extra["cost_usd"] == 0.0) == ((result == "coalesced",) * 2)


async def test_the_leader_leaving_does_not_stop_the_call_for_the_others(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunks=10, chunk_delay_s=0.05))
    body = {"model": "cached", "messages": messages(), "stream": True}
    headers = {"authorization": f"Bearer {KEYS['alpha']}"}
    async with async_client(gw) as c:
        async with (
            httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=10) as leader_client,
            leader_client.stream("POST", "/chat/completions", json=body) as leader,
        ):
            assert leader.headers["x-gateway-cache"] == "miss"
            async for _ in leader.aiter_bytes():
                break
            follower = await c.chat.completions.with_raw_response.create(model="cached", messages=body["messages"], stream=True)
        # the leader's connection is closed now, mid-stream
        text = "".join([ch.choices[0].delta.content or "" async for ch in follower.parse() if ch.choices])
    assert follower.headers["x-gateway-cache"] == "coalesced"
    assert text == "echo: " + body["messages"][0]["content"]
    assert upstream_calls(fake) == 1
    assert fake.disconnects == []  # the upstream call was never cut


async def test_everyone_leaving_cancels_the_upstream_call(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(chunks=50, chunk_delay_s=0.1))
    body = {"model": "cached", "messages": messages(), "stream": True}
    headers = {"authorization": f"Bearer {KEYS['alpha']}"}
    async with (
        httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=10) as c,
        c.stream("POST", "/chat/completions", json=body) as r,
    ):
        async for _ in r.aiter_bytes():
            break
    started = time.monotonic()
    assert await fake.wait_for_disconnect_async(3) is not None
    assert time.monotonic() - started < 2


async def test_errors_reach_every_waiting_request(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(Behavior(status=400, delay_s=0.3))
    body = messages()
    async with async_client(gw) as c:
        results = await asyncio.gather(
            *(c.chat.completions.create(model="cached", messages=body) for _ in range(10)), return_exceptions=True
        )
    assert all(isinstance(r, openai.BadRequestError) for r in results), results
    assert upstream_calls(fake) == 1


async def test_requests_that_cannot_be_cached_are_not_coalesced(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    fake.script(*(Behavior(delay_s=0.2) for _ in range(5)))
    body = messages()
    async with async_client(gw) as c:
        replies = await asyncio.gather(
            *(c.chat.completions.with_raw_response.create(model="determ", messages=body, temperature=0.9) for _ in range(5))
        )
    assert {r.headers["x-gateway-cache"] for r in replies} == {"bypass"}
    assert upstream_calls(fake) == 5
